"""Fixtures of the stream tests: a real Kafka-protocol broker (Tansu) per test, worker processes, real records.

Workers run as `python -m nids.stream` subprocesses (they are killed and restarted), scoring with the models
the session trained into its temporary store (tests/conftest.py). Records are rows of the committed datasets;
invalid ones are those rows with one rule broken (tests/fixtures/validation_cases.json).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from nids.core.settings import Settings
from nids.stream.devbroker import DevBroker, create_topics, free_port
from nids.stream.produce import encode, publish, read_records
from training.data import CIC_ORIGINAL, NSL_KDD_TEST

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
PARTITIONS = 4
Source = tuple[int, int]  # (partition, offset) of a record of the input topic


def threat_records(limit: int) -> list[dict[str, Any]]:
    """Real NSL-KDD flows (KDDTest+), as the test producer sends them."""
    return read_records(NSL_KDD_TEST, limit)


def attack_records(limit: int) -> list[dict[str, Any]]:
    """Real CICFlowMeter flows of the original CIC-IDS2017 release (spaced names)."""
    return read_records(CIC_ORIGINAL, limit)


@dataclass
class Answers:
    """What the workers wrote: prediction events and dead letters, parsed."""

    results: list[dict[str, Any]] = field(default_factory=list)
    dead: list[dict[str, Any]] = field(default_factory=list)

    def sources(self) -> set[Source]:
        return {(m["source"]["partition"], m["source"]["offset"]) for m in [*self.results, *self.dead]}

    def result_sources(self) -> list[Source]:
        return [(m["source"]["partition"], m["source"]["offset"]) for m in self.results]


class Worker:
    """One `python -m nids.stream` process with its own metrics port and log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.metrics_port = free_port()
        self.log = log
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nids.stream"],
                cwd=ROOT,
                env={**env, "NIDS_STREAM_METRICS_PORT": str(self.metrics_port)},
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def metrics(self) -> dict[str, float]:
        """Samples of the metrics port: 'name{label="v",...}' -> value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def wait_for(self, condition: Callable[[dict[str, float]], bool], timeout: float = 60) -> dict[str, float]:
        """Poll the metrics until `condition` holds (the worker must stay alive meanwhile)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"worker exited with {self.process.returncode}: {self.tail()}"
            try:
                samples = self.metrics()
                if condition(samples):
                    return samples
            except OSError:
                pass  # metrics port not up yet
            assert time.monotonic() < deadline, f"condition not met within {timeout} s: {self.tail()}"
            time.sleep(0.1)

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Stream:
    """A broker with the worker's topics, and helpers to start workers, produce records and read answers."""

    def __init__(self, broker: DevBroker, env: dict[str, str], directory: Path) -> None:
        self.broker = broker
        self.env = env
        self.directory = directory
        self.settings = Settings(kafka_bootstrap_servers=broker.bootstrap)
        self.workers: list[Worker] = []

    def worker(self, **env: str) -> Worker:
        worker = Worker({**self.env, **env}, self.directory / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def produce(self, values: list[bytes]) -> list[Source]:
        """Publish the values; the (partition, offset) the broker acknowledged for each, in order."""
        return asyncio.run(publish(self.settings, values))

    def produce_records(self, records: list[dict[str, Any]]) -> list[Source]:
        return self.produce(encode(records))

    def answers(self, expected: set[Source], timeout: float = 90) -> Answers:
        """Every event and dead letter on the output topics, once their sources cover `expected` (or timeout)."""
        return asyncio.run(self._answers(expected, timeout))

    async def _answers(self, expected: set[Source], timeout: float) -> Answers:
        s = self.settings
        topics = (s.kafka_results_topic, s.kafka_dlq_topic)
        consumer = AIOKafkaConsumer(*topics, bootstrap_servers=self.broker.bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        answers = Answers()
        deadline = time.monotonic() + timeout
        try:
            while not expected <= answers.sources() and time.monotonic() < deadline:
                for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                    target = answers.results if tp.topic == s.kafka_results_topic else answers.dead
                    target.extend(json.loads(m.value) for m in messages)
        finally:
            await consumer.stop()
        return answers

    def read_topic(self, topic: str, count: int, timeout: float = 30) -> list[bytes]:
        """The values of the first `count` messages of a topic (all partitions)."""
        return asyncio.run(self._read_topic(topic, count, timeout))

    async def _read_topic(self, topic: str, count: int, timeout: float) -> list[bytes]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.broker.bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            while len(values) < count and time.monotonic() < deadline:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    values.extend(m.value for m in messages)
        finally:
            await consumer.stop()
        return values

    def committed(self) -> dict[int, int]:
        """Offsets the worker group has committed on the input topic, by partition (absent: none)."""
        return asyncio.run(self._committed())

    async def _committed(self) -> dict[int, int]:
        s = self.settings
        consumer = AIOKafkaConsumer(bootstrap_servers=self.broker.bootstrap, group_id=s.kafka_group_id)
        await consumer.start()
        try:
            offsets = {p: await consumer.committed(TopicPartition(s.kafka_topic, p)) for p in range(PARTITIONS)}
        finally:
            await consumer.stop()
        return {p: offset for p, offset in offsets.items() if offset is not None}

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


@pytest.fixture
def stream(model_store, tmp_path: Path) -> Iterator[Stream]:
    with DevBroker(tmp_path / "broker.log") as broker:
        asyncio.run(create_topics(broker.bootstrap, Settings(), PARTITIONS))
        env = {
            **os.environ,
            "BENTOML_HOME": str(model_store.home),
            "NIDS_THREAT_MODEL_TAG": model_store.threat_tag,
            "NIDS_ATTACK_MODEL_TAG": model_store.attack_tag,
            "NIDS_DATA_DIR": str(tmp_path / "var"),
            "NIDS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            # a killed worker's partitions move after 2 s, not 10 (the group waits that long for it to answer)
            "NIDS_KAFKA_SESSION_TIMEOUT_MS": "2000",
            "NIDS_KAFKA_HEARTBEAT_INTERVAL_MS": "300",
        }
        stream = Stream(broker, env, tmp_path)
        try:
            yield stream
        finally:
            stream.close()
