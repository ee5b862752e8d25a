"""What callers not authorised to enforce may ask of the engine: their events never count against the rate limits
of enforced actions (nids.healing.audit.AuditStore.count_recent counts only authorised callers), and they have a
budget of their own, per requester (the token's label, or `anonymous`) and per worker process: at most
`per_request` events in one request and `per_minute` events a minute. Past it the request is refused (429) and
counted in aggregate (one audit row per requester and minute), never decided row by row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from nids.core.budget import SlidingWindow
from nids.core.errors import TooManyRequests
from nids.core.settings import Settings

MAX_REQUESTERS = 10_000  # distinct requesters tracked (labels of tokens, `anonymous`): bounded memory


@dataclass(frozen=True)
class Retention:
    """The audit log's retention: decisions older than `max_age_seconds` or past the newest `max_rows` are pruned
    every `every_seconds` (live blocks and pending actions are kept)."""

    max_age_seconds: float
    max_rows: int
    every_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(
            settings.healing_audit_max_age_days * 86_400,
            settings.healing_audit_max_rows,
            settings.healing_audit_prune_seconds,
        )


class UnauthorisedBudget:
    def __init__(self, per_minute: int, per_request: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.per_request, self.clock = per_minute, per_request, clock
        self._windows: dict[str, SlidingWindow] = {}

    @classmethod
    def from_settings(cls, settings: Settings, clock: Callable[[], float] = time.monotonic) -> UnauthorisedBudget:
        return cls(
            settings.healing_unauthorised_events_per_minute, settings.healing_unauthorised_events_per_request, clock
        )

    def refusal(self, requester: str, events: int) -> TooManyRequests | None:
        """None when `events` fit the requester's budget (and are charged), else the 429 to answer."""
        if events > self.per_request:
            return TooManyRequests(
                f"a caller not authorised to enforce may send at most {self.per_request} events per request "
                f"(NIDS_HEALING_UNAUTHORISED_EVENTS_PER_REQUEST); this one carried {events}; a sensor token lifts it"
            )
        window = self._windows.get(requester)
        if window is None:
            if len(self._windows) >= MAX_REQUESTERS:
                self._windows.clear()
            window = self._windows[requester] = SlidingWindow(self.per_minute, 60.0, self.clock)
        if not window.take(events):
            return TooManyRequests(
                f"{requester!r} is past its budget of {self.per_minute} events a minute "
                "(NIDS_HEALING_UNAUTHORISED_EVENTS_PER_MINUTE, callers not authorised to enforce); try again later"
            )
        return None
