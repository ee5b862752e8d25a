"""Fan-out of logged predictions to live subscribers (the /ws/realtime clients of one worker).

One poller per worker reads the predictions added to the shared log since the last id it saw (every worker's
and replica's), and offers each event to every subscriber's bounded queue. A subscriber whose queue is full
loses that event (counted: `on_dropped`); one that stays full for `max_dropped` events in a row is marked
`stalled` and cut off by its connection. Nothing here waits for a client, so no client slows predictions or
other clients. The poller only reads the store while someone is subscribed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nids.core.actions import original_status
from nids.core.features import ATTACK_CLASSES
from nids.observability.records import Source
from nids.observability.schemas import LoggedPrediction
from nids.observability.store import PredictionStore

logger = logging.getLogger("nids.observability")
TAIL_ROWS = 1_000
ATTACK_CODES: dict[str, int] = {name: code for code, name in enumerate(ATTACK_CLASSES)}


class EventFilter(BaseModel):
    """What a client subscribes to (the /ws/realtime query parameters)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attacks_only: bool = Field(False, description="only predictions whose verdict is attack")
    source: Source | None = Field(None, description="only predictions of this source: api, csv or stream")

    def accepts(self, prediction: LoggedPrediction) -> bool:
        if self.attacks_only and not prediction.threat_prediction.is_attack:
            return False
        return self.source is None or prediction.source == self.source


def original_parts(data: dict[str, Any]) -> dict[str, Any]:
    """The parts of a logged prediction (its JSON form) in the original system's shape: `traffic_data_id` and the
    threat prediction, attack prediction and self-healing action with every field its documents show (`id`s,
    `attack_type_encoded`, `action_params`, its `status` words; this project's status as `execution_status`).
    Every part's `id` is the prediction's id in the log, so each resolves through GET /api/v1/predictions/{id}."""
    i, attack, action = data["traffic_data_id"], data["attack_prediction"], data["self_healing_action"]
    return {
        "traffic_data_id": i,
        "threat_prediction": {"id": i, **data["threat_prediction"]},
        "attack_prediction": None
        if attack is None
        else {"id": i, "attack_type_encoded": ATTACK_CODES.get(attack["attack_type_name"]), **attack},
        "self_healing_action": None
        if action is None
        else {**action, "id": i, "status": original_status(action["status"]), "execution_status": action["status"]},
    }


def prediction_event(prediction: LoggedPrediction) -> dict[str, Any]:
    """The original system's `prediction` message: the logged prediction as the list API shows it (no features),
    its parts in the original's shape."""
    data = prediction.model_dump(mode="json", exclude={"features"})
    return {"type": "prediction", **data, **original_parts(data)}


@dataclass(eq=False)  # one per connection, kept in a set by identity
class Subscriber:
    filter: EventFilter
    queue: asyncio.Queue[dict[str, Any]]
    max_dropped: int
    dropped: int = 0
    dropped_in_a_row: int = 0
    stalled: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, event: dict[str, Any]) -> bool:
        """Queue the event; False when the queue was full (the event is dropped)."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            self.dropped_in_a_row += 1
            if self.dropped_in_a_row >= self.max_dropped:
                self.stalled.set()
            return False
        self.dropped_in_a_row = 0
        return True


class Hub:
    def __init__(
        self,
        store: PredictionStore,
        *,
        poll_seconds: float,
        client_queue: int,
        on_dropped: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self.client_queue = client_queue
        self.on_dropped = on_dropped
        self.subscribers: set[Subscriber] = set()
        self._cursor: int | None = None
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, event_filter: EventFilter) -> Subscriber:
        subscriber = Subscriber(event_filter, asyncio.Queue(self.client_queue), max_dropped=self.client_queue)
        self.subscribers.add(subscriber)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="realtime-poller")
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    async def _poll(self) -> None:
        while self.subscribers:
            try:
                if self._cursor is None:
                    self._cursor = await asyncio.to_thread(self.store.last_id)
                predictions = await asyncio.to_thread(self.store.tail, self._cursor, TAIL_ROWS)
            except Exception as error:  # the store is down: keep the clients, try again
                logger.warning("realtime stream cannot read the prediction log: %s", error)
                predictions = []
            for prediction in predictions:
                self._cursor = prediction.traffic_data_id
                self.publish(prediction)
                await asyncio.sleep(0)  # let the clients' senders move the event on before the next one
            if len(predictions) < TAIL_ROWS:
                await asyncio.sleep(self.poll_seconds)
        self._cursor = None  # nobody listens: the next subscriber starts from the newest prediction

    def publish(self, prediction: LoggedPrediction) -> None:
        event: dict[str, Any] | None = None
        dropped = 0
        for subscriber in list(self.subscribers):
            if subscriber.filter.accepts(prediction):
                event = event or prediction_event(prediction)
                dropped += not subscriber.offer(event)
        if dropped:
            self.on_dropped(dropped)
