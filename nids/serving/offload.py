"""Work that may wait (the audit store, CSV parsing, listings) runs on threads of its own, never ahead of inference.

BentoML 1.4 runs every sync API through one capacity limiter of `threads` (default 1): a `self_heal` waiting on a
locked audit database would hold the only thread and every `detect_threat` batch would queue behind it. The APIs
that touch the audit store or parse uploads are therefore async and await `off_inference(...)`, which runs the
work on a pool of SIDE_THREADS threads of its own; the batched inference APIs keep BentoML's thread to themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

R = TypeVar("R")
SIDE_THREADS = 8


@functools.cache
def _side_threads() -> anyio.CapacityLimiter:
    return anyio.CapacityLimiter(SIDE_THREADS)  # created on first use, inside the worker's event loop


async def off_inference(func: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
    """`func(*args, **kwargs)` on the side threads, awaited without blocking the event loop or inference."""
    return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs), limiter=_side_threads())
