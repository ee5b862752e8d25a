"""At least once on a real broker: SIGKILL and restart, SIGTERM drain, a second worker joining the group,
and the self-healing audit log going down mid-stream (PostgreSQL)."""

from __future__ import annotations

import os
import signal
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.stream.conftest import PARTITIONS, Answers, Source, Stream, attack_records, threat_records

pytestmark = [pytest.mark.spread, pytest.mark.long_running]  # a broker per test: none shared by the module

# small batches make a stream of a few thousand records last long enough to be interrupted mid-way
SMALL_BATCHES = {"NIDS_STREAM_BATCH_SIZE": "20"}
OUT = 'nids_stream_records_out_total{topic="network-predictions"}'
IN = 'nids_stream_records_in_total{topic="network-traffic"}'
ASSIGNED = "nids_stream_assigned_partitions"


def assert_every_record_answered_once_at_least(answers: Answers, sent: list[Source]) -> Counter[Source]:
    """Results + dead letters cover every record sent, and answer nothing else; the count per record."""
    counts = Counter(answers.result_sources()) + Counter(
        (d["source"]["partition"], d["source"]["offset"]) for d in answers.dead
    )
    assert set(counts) == set(sent)
    return counts


def test_sigkill_mid_stream_then_restart_loses_no_record(stream: Stream) -> None:
    sent = stream.produce_records(threat_records(12_000) + attack_records(500))
    worker = stream.worker(**SMALL_BATCHES)
    worker.wait_for(lambda m: m.get(OUT, 0) > 0)
    worker.signal(signal.SIGKILL)
    worker.wait()
    committed = stream.committed()
    assert sum(committed.values()) < len(sent), "the worker had finished before it was killed"

    stream.worker(**SMALL_BATCHES)
    answers = stream.answers(set(sent))
    counts = assert_every_record_answered_once_at_least(answers, sent)
    # a duplicate (records answered before the kill but not committed) repeats the same verdict
    verdicts: dict[Source, set[float]] = {}
    for event in answers.results:
        source = (event["source"]["partition"], event["source"]["offset"])
        verdicts.setdefault(source, set()).add(round(event["threat_prediction"]["prediction_score"], 9))
    assert all(len(scores) == 1 for scores in verdicts.values())
    assert sum(counts.values()) >= len(sent)


def test_sigterm_drains_commits_and_exits_so_a_restart_repeats_nothing(stream: Stream) -> None:
    sent = stream.produce_records(threat_records(12_000) + attack_records(500))
    worker = stream.worker(**SMALL_BATCHES)
    worker.wait_for(lambda m: m.get(OUT, 0) > 0)
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    committed = stream.committed()
    assert 0 < sum(committed.values()) < len(sent), "SIGTERM should have landed mid-stream"

    stream.worker(**SMALL_BATCHES)
    counts = assert_every_record_answered_once_at_least(stream.answers(set(sent)), sent)
    # everything the first worker answered, it committed: the second answered only the rest
    assert set(counts.values()) == {1}


def test_a_second_worker_joins_the_group_and_shares_the_partitions_without_loss(stream: Stream) -> None:
    first_part = stream.produce_records(threat_records(6_000))
    first = stream.worker(**SMALL_BATCHES)
    first.wait_for(lambda m: m.get(OUT, 0) > 0)
    second = stream.worker(**SMALL_BATCHES)
    second.wait_for(lambda m: m.get(ASSIGNED, 0) > 0)
    assert first.wait_for(lambda m: m.get(ASSIGNED) == PARTITIONS - second.metrics()[ASSIGNED])
    second_part = stream.produce_records(threat_records(6_000) + attack_records(300))

    sent = first_part + second_part
    assert_every_record_answered_once_at_least(stream.answers(set(sent)), sent)
    # both workers scored records, and together they read each record once or (around the rebalance) twice
    read = [worker.wait_for(lambda m: m.get(IN, 0) > 0)[IN] for worker in (first, second)]
    assert sum(read) >= len(sent)
    for worker in (first, second):
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0


# --- the self-healing audit log goes down ---------------------------------------------------------------
PG_ADMIN_URL = os.environ.get("NIDS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROLE = "nids_stream_test"


@pytest.fixture
def audit_role() -> Iterator[str]:
    """A PostgreSQL role of the worker's own, which the test can lock out (the audit store going down)."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {error}")
    with admin:
        admin.execute(
            f"DO $$ BEGIN CREATE ROLE {ROLE} LOGIN; EXCEPTION WHEN duplicate_object THEN ALTER ROLE {ROLE} LOGIN; "
            "END $$"
        )
        admin.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {ROLE}")
        try:
            yield ROLE
        finally:
            admin.execute(f"ALTER ROLE {ROLE} LOGIN")
            admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{ROLE}'")
            admin.execute(f"DROP OWNED BY {ROLE}")
            admin.execute(f"DROP ROLE {ROLE}")


def set_login(allowed: bool) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"ALTER ROLE {ROLE} {'LOGIN' if allowed else 'NOLOGIN'}")
        if not allowed:
            admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{ROLE}'")


def test_audit_log_outage_pauses_consumption_and_retries_without_dropping(stream: Stream, audit_role: str) -> None:
    import psycopg

    prefix = f"stream_{uuid.uuid4().hex[:8]}_"
    url = PG_ADMIN_URL.replace("postgres@", f"{audit_role}@", 1)
    worker = stream.worker(
        NIDS_HEALING_AUDIT_URL=url,
        NIDS_HEALING_AUDIT_TABLE_PREFIX=prefix,
        NIDS_MODEL_STATE_TABLE_PREFIX=f"{prefix}lifecycle_",  # the model lifecycle shares the database by default
        NIDS_STREAM_RETRY_SECONDS="0.1",
        NIDS_STREAM_MAX_RETRY_SECONDS="0.5",
    )
    before = stream.produce_records(attack_records(100))
    worker.wait_for(lambda m: m.get(OUT, 0) == len(before))

    set_login(False)
    during = stream.produce_records(attack_records(200)[100:] + threat_records(100))
    retries = 'nids_stream_retries_total{cause="audit"}'
    held = worker.wait_for(lambda m: m.get("nids_stream_paused") == 1 and m.get(retries, 0) >= 3)
    assert held[OUT] == len(before)  # nothing answered meanwhile...
    assert held.get('nids_stream_records_dead_lettered_total{topic="network-traffic.dlq"}', 0) == 0  # ...or dropped

    set_login(True)
    worker.wait_for(lambda m: m.get(OUT, 0) == len(before) + len(during) and m.get("nids_stream_paused") == 0)
    sent = before + during
    answers = stream.answers(set(sent))
    assert sorted(answers.result_sources()) == sorted(sent) and not answers.dead
    with psycopg.connect(PG_ADMIN_URL) as admin:
        decisions = admin.execute(f"SELECT count(*) FROM {prefix}actions").fetchone()[0]
    assert decisions == 200  # one audited decision per attack record, none lost and none twice
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_broker_outage_pauses_consumption_and_resends_without_loss(stream: Stream) -> None:
    """The broker stops answering (SIGSTOP) while results are being produced; they are re-sent after it resumes."""
    worker = stream.worker(**SMALL_BATCHES, NIDS_KAFKA_ACK_TIMEOUT_MS="1000", NIDS_STREAM_MAX_RETRY_SECONDS="0.5")
    sent = stream.produce_records(threat_records(12_000))
    worker.wait_for(lambda m: m.get(OUT, 0) > 0)
    stream.broker.process.send_signal(signal.SIGSTOP)
    try:
        held = worker.wait_for(lambda m: m.get("nids_stream_paused") == 1)
        assert held['nids_stream_retries_total{cause="produce"}'] >= 1
    finally:
        stream.broker.process.send_signal(signal.SIGCONT)
    assert_every_record_answered_once_at_least(stream.answers(set(sent)), sent)
    worker.wait_for(lambda m: m.get("nids_stream_paused") == 0)
