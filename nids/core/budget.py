"""A sliding-window budget: at most `limit` units per `seconds`, for one process (thread-safe).

Used where a caller's use must be bounded without a shared store: exports of model packages per minute
(nids.serving.routes.models) and the events of callers not authorised to enforce (nids.healing.budget).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class SlidingWindow:
    def __init__(self, limit: int, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if limit <= 0 or seconds <= 0:
            raise ValueError("a budget needs a positive limit and window")
        self.limit, self.seconds, self.clock = limit, seconds, clock
        self._spent: deque[tuple[float, int]] = deque()  # (when, units), oldest first
        self._total = 0
        self._lock = threading.Lock()

    def take(self, units: int = 1) -> bool:
        """Spend `units` if the window has room for all of them; False (nothing spent) otherwise."""
        with self._lock:
            now = self.clock()
            while self._spent and self._spent[0][0] <= now - self.seconds:
                self._total -= self._spent.popleft()[1]
            if self._total + units > self.limit:
                return False
            self._spent.append((now, units))
            self._total += units
            return True
