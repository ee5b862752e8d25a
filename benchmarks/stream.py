"""Stream ingestion speed: `python -m benchmarks.stream [--threat N] [--attack N] [--batch-size N]`.

One `python -m nids.stream` worker against a local Tansu broker (nids.stream.devbroker, memory storage) on
127.0.0.1, scoring with the models of the BentoML store (NIDS_THREAT_MODEL_TAG / NIDS_ATTACK_MODEL_TAG,
default :latest). Records are real rows: KDDTest+ (threat) and the original-release CIC-IDS2017 sample
(attack), repeated to the requested count, encoded before the clock starts. For each kind, end to end: the
time from the first record produced to the last answer (prediction event or dead letter) read back from the
output topics, by a producer and a reader in this process, on the same two cores as the worker and the
broker; with the CPU each of the three used per record, and what other processes on the machine used. Then,
in this process with the worker idle, the same records in-process: the model call alone (`predict_proba` on
batches of the worker's size) and the worker's whole CPU path (nids.stream.worker.score_batch: decode,
validate, models, self-healing, serialise). Prints Markdown; writes JSON under loadtest/results/benchmarks/.
The worker inherits this process's environment: NIDS_PREDICTION_LOG_ENABLED=false measures it without the
prediction log. With it (the default), each phase also waits until the log (SQLite in the worker's data
directory) holds every scored record, and says how long after the last answer that was; the log writer's CPU is
that of the worker's child processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from loadtest.run import RESULTS, git_version
from nids.core.encoding import to_matrix
from nids.core.settings import Settings, get_settings
from nids.healing.engine import HealingEngine
from nids.models.artifacts import load_model
from nids.models.registry import REGISTRY
from nids.stream.devbroker import DevBroker, create_topics
from nids.stream.messages import triage
from nids.stream.produce import encode, publish, read_records
from nids.stream.worker import score_batch, tune_collector
from training.data import CIC_ORIGINAL, NSL_KDD_TEST

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 4
WARM_UP = 2_000


class Answers:
    """Counts the messages on the output topics as they arrive (a reader from the beginning, in the background)."""

    def __init__(self, bootstrap: str, settings: Settings) -> None:
        topics = (settings.kafka_results_topic, settings.kafka_dlq_topic)
        self.consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        self.count = 0
        self.last = 0.0
        self.dead = 0
        self.dlq = settings.kafka_dlq_topic
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            for tp, messages in (await self.consumer.getmany(timeout_ms=100, max_records=10_000)).items():
                self.count += len(messages)
                self.dead += len(messages) if tp.topic == self.dlq else 0
                self.last = time.perf_counter()

    async def until(self, count: int, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while self.count < count:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{self.count} of {count} answers within {timeout} s")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.consumer.stop()


def repeated(rows: list[dict[str, Any]], n: int) -> list[bytes]:
    return encode(islice(cycle(rows), n))


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def children_cpu_seconds(process: psutil.Process) -> float:
    """CPU of a process's children alive now (the worker's prediction-log writer process)."""
    total = 0.0
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += cpu_seconds(child)
    return total


def logged_rows(path: Path) -> int:
    """Rows the stream wrote to the prediction log so far (0 before the table exists)."""
    if not path.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM nids_predictions WHERE source = 'stream'").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


async def until_logged(path: Path | None, count: int, timeout: float) -> float | None:
    """Seconds until the prediction log holds `count` stream rows (None: the log is off, or not within timeout)."""
    if path is None:
        return None
    start = time.perf_counter()
    while logged_rows(path) < count:
        if time.perf_counter() - start > timeout:
            return None
        await asyncio.sleep(0.05)
    return time.perf_counter() - start


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all processes, all cores)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


async def end_to_end(
    bootstrap: str,
    processes: dict[str, psutil.Process],
    kinds: dict[str, list[bytes]],
    timeout: float,
    log: Path | None,
) -> dict[str, dict[str, Any]]:
    """Records/s from the first record produced to the last answer read, the CPU each process used (the worker's
    log writer: its children), and how long after the last answer the prediction log held every record."""
    settings = Settings(kafka_bootstrap_servers=bootstrap)
    answers = Answers(bootstrap, settings)
    await answers.start()
    try:
        await publish(settings, kinds["threat"][:WARM_UP])  # the worker joins its group and warms up
        await answers.until(WARM_UP, timeout)
        expected, figures = WARM_UP, {}
        for kind, values in kinds.items():
            expected += len(values)
            dead_before, busy_before = answers.dead, busy_seconds()
            cpu_before = {name: cpu_seconds(process) for name, process in processes.items()}
            writer_before = children_cpu_seconds(processes["worker"])
            start = time.perf_counter()
            await publish(settings, values)
            produced = time.perf_counter() - start
            await answers.until(expected, timeout)
            seconds = answers.last - start
            log_lag = await until_logged(log, expected - answers.dead, timeout)
            cpu = {f"{name}_cpu_seconds": cpu_seconds(p) - cpu_before[name] for name, p in processes.items()}
            cpu["log_writer_cpu_seconds"] = children_cpu_seconds(processes["worker"]) - writer_before
            figures[kind] = {
                "records": len(values),
                "seconds": seconds,
                "records_per_second": len(values) / seconds,
                "produce_seconds": produced,
                "dead_lettered": answers.dead - dead_before,
                "log_complete_after_seconds": log_lag,  # after the last answer; None: log off or incomplete
                "logged_rows": logged_rows(log) if log is not None else None,
                **cpu,
                "other_processes_cpu_seconds": busy_seconds() - busy_before - sum(cpu.values()),
            }
        return figures
    finally:
        await answers.stop()


def in_process(kinds: dict[str, list[bytes]], batch: int, data_dir: Path) -> dict[str, dict[str, float]]:
    """Model call alone and the worker's CPU path per batch, on the same records, with the same models."""
    settings = get_settings()
    models = REGISTRY.load(settings.threat_model_tag, settings.attack_model_tag, load_model)
    engine = HealingEngine.from_settings(settings.model_copy(update={"data_dir": data_dir}))
    tune_collector()  # as the worker does after loading
    stream = Settings()
    figures = {}
    try:
        for kind, values in kinds.items():
            records = [ConsumerRecord("in", 0, i, 0, 0, None, v, None, 0, len(v), []) for i, v in enumerate(values)]
            batches = [records[i : i + batch] for i in range(0, len(records), batch)]
            model = models.threat if kind == "threat" else models.attack
            matrices = [
                to_matrix([f.root for f in triage(b).flows], model.feature_names, model.encoders) for b in batches
            ]
            start = time.perf_counter()
            for matrix in matrices:
                model.predict_proba(matrix)
            model_seconds = time.perf_counter() - start
            start = time.perf_counter()
            for records_batch in batches:
                score_batch(records_batch, models, engine.handle, stream)
            path_seconds = time.perf_counter() - start
            figures[kind] = {
                "model_records_per_second": sum(len(m) for m in matrices) / model_seconds,
                "pipeline_records_per_second": len(records) / path_seconds,
            }
    finally:
        engine.close()
    return figures


def markdown(e2e: dict[str, dict[str, float]], local: dict[str, dict[str, float]], batch: int) -> str:
    lines = [
        f"| records | count | end to end (records/s) | CPU per record: worker / log writer / broker / "
        f"producer+reader | other processes' CPU | dead-lettered | prediction log: rows (all phases), complete "
        f"after the last answer | model only (records/s, batch {batch}) | worker's CPU path in-process (records/s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, f in e2e.items():
        n, seconds = f["records"], f["seconds"]
        names = ("worker", "log_writer", "broker", "benchmark")
        per = " / ".join(f"{f[f'{name}_cpu_seconds'] / n * 1e6:.1f}" for name in names)
        lag = f["log_complete_after_seconds"]
        log = (
            "off"
            if f["logged_rows"] is None
            else f"{f['logged_rows']:,}, " + ("incomplete" if lag is None else f"{lag:.1f} s")
        )
        lines.append(
            f"| {kind} | {n:,} | **{f['records_per_second']:,.0f}** | {per} us | "
            f"{f['other_processes_cpu_seconds'] / seconds:.0%} of a core | {f['dead_lettered']:,} | {log} | "
            f"{local[kind]['model_records_per_second']:,.0f} | {local[kind]['pipeline_records_per_second']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threat", type=int, default=100_000, help="threat records to stream")
    parser.add_argument("--attack", type=int, default=20_000, help="attack records to stream")
    parser.add_argument("--batch-size", type=int, default=Settings().stream_batch_size)
    parser.add_argument("--timeout", type=float, default=300, help="give up on a phase after this many seconds")
    args = parser.parse_args()
    kinds = {
        "threat": repeated(read_records(NSL_KDD_TEST), args.threat),
        "attack": repeated(read_records(CIC_ORIGINAL), args.attack),
    }
    with tempfile.TemporaryDirectory(prefix="nids-stream-bench-") as scratch, DevBroker() as broker:
        asyncio.run(create_topics(broker.bootstrap, Settings(), PARTITIONS))
        env = {
            **os.environ,
            "NIDS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "NIDS_DATA_DIR": str(Path(scratch) / "worker"),
            "NIDS_STREAM_METRICS_PORT": "0",
            "NIDS_STREAM_BATCH_SIZE": str(args.batch_size),
        }
        log = Path(scratch) / "worker.log"
        with log.open("wb") as output:
            process = subprocess.Popen([sys.executable, "-m", "nids.stream"], cwd=REPO, env=env, stdout=output,
                                       stderr=subprocess.STDOUT)  # fmt: skip
        try:
            processes = {
                "worker": psutil.Process(process.pid),
                "broker": psutil.Process(broker.process.pid),
                "benchmark": psutil.Process(),  # producer and reader of the answers
            }
            logged = Settings().prediction_log_enabled  # as the worker reads it
            database = Path(scratch) / "worker" / "predictions.sqlite3" if logged else None
            e2e = asyncio.run(end_to_end(broker.bootstrap, processes, kinds, args.timeout, database))
        except TimeoutError:
            print(log.read_text(errors="replace")[-3000:])
            raise
        finally:
            process.terminate()
            process.wait(60)
        local = in_process({kind: values[:20_000] for kind, values in kinds.items()}, args.batch_size, Path(scratch))
    print(markdown(e2e, local, args.batch_size))
    out = RESULTS / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"stream-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    document = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "git": git_version(),
                "python": platform.python_version(), "batch_size": args.batch_size, "end_to_end": e2e,
                "in_process": local}  # fmt: skip
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
