"""Sending many messages at once: one produce batch per target partition, and one acknowledgement per batch.

aiokafka's `send` costs ~12 us of CPU a message (a future, the partitioner and the accumulator, each time);
building the batches directly (`create_batch` / `send_batch`) costs ~1 us. The worker sends its results this
way, and so does the test producer.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

# a produce batch (the producer's max_batch_size): well under the 1 MiB a Kafka broker takes by default
MAX_BATCH_BYTES = 512 * 1024
_PARTITIONER = DefaultPartitioner()


@dataclass(frozen=True)
class Outbound:
    topic: str
    key: bytes | None
    value: bytes


# messages sent as one produce batch, and the broker's acknowledgement of that batch
Pending = tuple[list[Outbound], "asyncio.Future[object]"]


class BatchSender:
    """Sends messages in produce batches on a started producer (created with max_batch_size=MAX_BATCH_BYTES)."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.turns: dict[str, int] = {}  # partition of the next keyless messages, per topic

    async def send(self, messages: Sequence[Outbound]) -> list[Pending]:
        """Send the messages as produce batches, one per target partition (or more when a batch fills up).

        A message with a key goes where the producer's default partitioner puts it (Kafka's murmur2 hash, so
        one key stays on one partition); keyless messages of one call go to the topic's next partition in turn.
        A batch that cannot be sent comes back as a failed acknowledgement, to be re-sent.
        """
        targets: dict[tuple[str, int], list[Outbound]] = defaultdict(list)
        pending: list[Pending] = []
        for topic in {message.topic for message in messages}:
            group = [message for message in messages if message.topic == topic]
            try:
                partitions = sorted(await self.producer.partitions_for(topic))
            except KafkaError as error:
                pending.append((group, _failed(error)))
                continue
            turn = self.turns[topic] = (self.turns.get(topic, -1) + 1) % len(partitions)
            for message in group:
                key = message.key
                partition = partitions[turn] if key is None else _PARTITIONER(key, partitions, partitions)
                targets[(topic, partition)].append(message)
        for (topic, partition), group in targets.items():
            batch, members = self.producer.create_batch(), []
            for message in group:
                if batch.append(key=message.key, value=message.value, timestamp=None) is None:  # full
                    pending.append((members, await self._submit(batch, topic, partition)))
                    batch, members = self.producer.create_batch(), []
                    if batch.append(key=message.key, value=message.value, timestamp=None) is None:
                        raise ValueError(f"a message of {len(message.value)} bytes exceeds the producer's batch size")
                members.append(message)
            pending.append((members, await self._submit(batch, topic, partition)))
        return pending

    async def _submit(self, batch: BatchBuilder, topic: str, partition: int) -> asyncio.Future[object]:
        try:
            return await self.producer.send_batch(batch, topic, partition=partition)
        except KafkaError as error:
            return _failed(error)


def _failed(error: KafkaError) -> asyncio.Future[object]:
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future
