"""The stream worker: consume flow records, score them in batches, produce results, commit - at least once.

One loop reads a batch (up to `stream_batch_size` records, or what arrived within `stream_batch_wait_ms`),
scores it off the event loop (triage -> nids.core.pipeline.analyze -> events; the loop keeps heartbeats, fetches
and produce requests going meanwhile) and hands every result and dead letter to the producer. A batch's
offsets are committed only once the broker has acknowledged every one of its messages, batch after batch in
the order they were read, so a crash at any point loses no record: what was not committed is read again
(possibly a duplicate, with the same `source`). At most `stream_max_in_flight_batches` batches await their
acknowledgements; a failed produce or audit write pauses consumption and is retried with a doubling wait,
never dropped. A rebalance first settles every batch read (acknowledged, committed); SIGTERM does the same,
then leaves the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from nids.core import pipeline
from nids.core.errors import InvalidInput
from nids.core.model import ActiveModels
from nids.core.pipeline import Healer
from nids.core.settings import Settings
from nids.healing.audit import AuditUnavailable
from nids.healing.engine import HealingEngine
from nids.models.registry import ModelRegistry
from nids.observability.records import PredictionBatch, PredictionSink
from nids.stream.batches import MAX_BATCH_BYTES, BatchSender, Outbound, Pending
from nids.stream.messages import PredictionEvent, Record, dead_letter_json, event_json, prediction_event, triage
from nids.stream.metrics import stream_metrics
from nids.stream.settings import client_options

STREAM_CALLER = "stream"  # recorded as authorised_by on the actions the stream enforces
logger = logging.getLogger("nids.stream")


@dataclass
class Scored:
    """A scored batch: its messages, and the offset to commit per partition once they are acknowledged."""

    offsets: dict[TopicPartition, int]
    messages: list[Outbound]
    results: int
    received: float


@dataclass
class InFlight:
    batch: Scored
    pending: list[Pending]

    def done(self) -> bool:
        return all(future.done() for _, future in self.pending)


def tune_collector() -> None:
    """Garbage collection for a long-running worker; call once everything long-lived is loaded.

    What is loaded by then (models, schemas, the engine) lives as long as the process: freezing it keeps it out
    of every later full collection (-30% CPU per record: the collector otherwise walks those objects again and
    again). A batch allocates ~50 objects a record that reference counting frees; a young generation of 50,000
    instead of 700 spares most collections of them (-12% CPU per record). Measured with benchmarks/stream.py.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def score_batch(
    records: Sequence[Record],
    models: ActiveModels,
    heal: Healer,
    settings: Settings,
    sink: PredictionSink | None = None,
) -> tuple[list[Outbound], int]:
    """The CPU part of a batch: validate, score, decide, log, serialise. The messages to send, and how many are
    results. The batch's predictions go to `sink` (the prediction log, source "stream") once they are decided."""
    batch = triage(records)
    events: list[PredictionEvent] = []
    if batch.flows:
        try:
            response = pipeline.analyze(models, heal, batch.flows)
        except InvalidInput as error:  # a category code past the model's categories, refused before any decision
            batch.refuse(error.detail)
            response = pipeline.analyze(models, heal, batch.flows)
        events = [prediction_event(r, result) for r, result in zip(batch.valid, response.results, strict=True)]
        if sink is not None:
            sink.record(PredictionBatch.of_analysis(models, batch.flows, response, "stream"))
    messages = [
        Outbound(settings.kafka_results_topic, record.key, event_json(event))
        for record, event in zip(batch.valid, events, strict=True)
    ]
    messages.extend(
        Outbound(settings.kafka_dlq_topic, record.key, dead_letter_json(letter)) for record, letter in batch.dead
    )
    return messages, len(events)


class StreamWorker:
    def __init__(
        self,
        settings: Settings,
        models: ModelRegistry,
        engine: HealingEngine,
        sink: PredictionSink | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.engine = engine
        # the stream's events are enforced only where configured (NIDS_STREAM_ENFORCE), as a sensor token would be
        self.heal: Healer = partial(engine.handle, caller=STREAM_CALLER if settings.stream_enforce else None)
        self.sink = sink
        self.metrics = stream_metrics()
        self.consumer = AIOKafkaConsumer(
            group_id=settings.kafka_group_id,
            enable_auto_commit=False,
            auto_offset_reset=settings.kafka_auto_offset_reset,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
            **client_options(settings),
        )
        self.producer = AIOKafkaProducer(
            acks=_acks(settings.kafka_acks),
            linger_ms=5,
            max_batch_size=MAX_BATCH_BYTES,
            request_timeout_ms=settings.kafka_ack_timeout_ms,
            **client_options(settings),
        )
        self._stopping = asyncio.Event()
        self._in_flight: deque[InFlight] = deque()
        self._settling = asyncio.Lock()
        self._holds: set[str] = set()  # causes of the current pause
        self._committed: dict[TopicPartition, int] = {}
        self.sender = BatchSender(self.producer)

    def stop(self) -> None:
        """Finish the batch at hand, settle every batch read, commit, leave the group (SIGTERM)."""
        self._stopping.set()

    async def run(self) -> None:
        await self.producer.start()
        try:
            self.consumer.subscribe([self.settings.kafka_topic], listener=_Rebalance(self))
            await self.consumer.start()
            try:
                await self._consume()
            finally:
                await self.consumer.stop()
        finally:
            await self.producer.stop()

    async def _consume(self) -> None:
        limit = self.settings.stream_max_in_flight_batches
        while not self._stopping.is_set():
            records = await self._next_batch()
            if records:
                scored = await self._score(records)
                self._in_flight.append(InFlight(scored, await self.sender.send(scored.messages)))
            await self._settle(keep=limit - 1)
            self._observe_lag()
        await self._settle(keep=0)
        logger.info("stream worker stopped: every record read is answered and committed")

    async def _next_batch(self) -> list[Record]:
        """Up to stream_batch_size records, as many as arrive within stream_batch_wait_ms."""
        size = self.settings.stream_batch_size
        deadline = time.monotonic() + self.settings.stream_batch_wait_ms / 1000
        records: list[Record] = []
        while len(records) < size and not self._stopping.is_set():
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
            fetched = await self.consumer.getmany(timeout_ms=wait_ms, max_records=size - len(records))
            for partition_records in fetched.values():
                records.extend(partition_records)
            if not fetched or wait_ms == 0:
                break
        return records

    # --- scoring ---------------------------------------------------------------------------------------
    async def _score(self, records: Sequence[Record]) -> Scored:
        """Results and dead letters of a batch; retried while the audit log is down (consumption paused)."""
        received = time.monotonic()
        self.metrics.records_in.labels(self.settings.kafka_topic).inc(len(records))
        self.metrics.batch_records.observe(len(records))
        offsets: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
        delay = self.settings.stream_retry_seconds
        while True:
            try:
                messages, results = await asyncio.to_thread(
                    score_batch, records, self.models.active(), self.heal, self.settings, self.sink
                )
                break
            except AuditUnavailable as error:
                self._hold("audit")
                self.metrics.retries.labels("audit").inc()
                logger.warning("self-healing audit log unavailable, retrying in %.1f s: %s", delay, error)
                await asyncio.sleep(delay)
                delay = min(2 * delay, self.settings.stream_max_retry_seconds)
        self._release("audit")
        return Scored(offsets, messages, results, received)

    # --- producing and committing ----------------------------------------------------------------------
    async def _settle(self, keep: int) -> None:
        """Acknowledge and commit batches, oldest first, until at most `keep` remain and the oldest is pending."""
        async with self._settling:
            while self._in_flight and (len(self._in_flight) > keep or self._in_flight[0].done()):
                flight = self._in_flight[0]
                await self._acknowledged(flight)
                self._in_flight.popleft()
                batch = flight.batch
                self.metrics.records_out.labels(self.settings.kafka_results_topic).inc(batch.results)
                self.metrics.dead_lettered.labels(self.settings.kafka_dlq_topic).inc(
                    len(batch.messages) - batch.results
                )
                await self._commit(batch.offsets)
                self.metrics.batch_seconds.observe(time.monotonic() - batch.received)

    async def _acknowledged(self, flight: InFlight) -> None:
        """Wait for every message of the batch; re-send the failed ones (consumption paused) until none fails."""
        delay = self.settings.stream_retry_seconds
        while True:
            failed: list[Outbound] = []
            error: BaseException | None = None
            for messages, future in flight.pending:
                try:
                    await future
                except KafkaError as exc:
                    failed.extend(messages)
                    error = exc
            if not failed:
                self._release("produce")
                return
            self._hold("produce")
            self.metrics.retries.labels("produce").inc()
            logger.warning("%d messages not acknowledged, re-sending in %.1f s: %r", len(failed), delay, error)
            await asyncio.sleep(delay)
            delay = min(2 * delay, self.settings.stream_max_retry_seconds)
            flight.pending = await self.sender.send(failed)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit what this worker still owns; a partition lost to a rebalance is read again elsewhere."""
        owned = {tp: offset for tp, offset in offsets.items() if tp in self.consumer.assignment()}
        if not owned:
            return
        try:
            await asyncio.wait_for(self.consumer.commit(owned), self.settings.kafka_ack_timeout_ms / 1000)
        except (CommitFailedError, IllegalStateError) as error:
            logger.warning("commit refused (rebalanced meanwhile; those records will be read again): %s", error)
            return
        except (KafkaError, TimeoutError) as error:  # the next commit covers these records, or they are read again
            self.metrics.retries.labels("commit").inc()
            logger.warning("commit failed: %r", error)
            return
        self._committed.update(owned)

    # --- back-pressure and lag -------------------------------------------------------------------------
    def _hold(self, cause: str) -> None:
        if not self._holds:
            self.consumer.pause(*self.consumer.assignment())
            self.metrics.paused.set(1)
        self._holds.add(cause)

    def _release(self, cause: str) -> None:
        if cause not in self._holds:
            return
        self._holds.discard(cause)
        if not self._holds:
            self.consumer.resume(*self.consumer.assignment())
            self.metrics.paused.set(0)

    def _observe_lag(self) -> None:
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            committed = self._committed.get(tp)
            if highwater is not None and committed is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - committed))

    # --- rebalances -------------------------------------------------------------------------------------
    async def on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._settle(keep=0)  # every batch read so far: acknowledged and committed
        self.metrics.assigned.set(0)
        for tp in revoked:
            self._committed.pop(tp, None)
            with contextlib.suppress(KeyError):  # no lag published for it yet
                self.metrics.lag.remove(tp.topic, str(tp.partition))

    async def on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.metrics.assigned.set(len(assigned))
        if self._holds:  # still paused for back-pressure: so are the new partitions
            self.consumer.pause(*assigned)
        for tp in assigned:  # the group's committed offsets: lag is known before this worker commits anything
            committed = await self.consumer.committed(tp)
            if committed is not None:
                self._committed[tp] = committed


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self.worker.on_assigned(assigned)


def _acks(acks: str) -> int | str:
    return "all" if acks == "all" else int(acks)
