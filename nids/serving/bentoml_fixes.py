"""Workarounds for per-request costs inside BentoML 1.4.39 (measured in BENCHMARKS.md).

BentoML's TimeoutMiddleware schedules a timer per request and never cancels it, so each request's context
(tracing span, futures, locks) stays alive for the whole traffic timeout. At a few hundred requests per second
every full garbage collection then walks 100k+ extra objects and stalls the event loop for 50-130 ms: p99
spikes and 503s from the batcher. `install()` replaces its `__call__` with the same code plus the cancel.
The patch applies only to the pinned version; any other version is left untouched (and logged).
"""

from __future__ import annotations

import asyncio
import logging

import bentoml
from bentoml._internal.server.http import traffic

from nids.serving.asgi import Message, Receive, Scope, Send

logger = logging.getLogger("nids.bentoml_fixes")
PATCHED_VERSION = "1.4.39"


async def _timeout_middleware_call(self: traffic.TimeoutMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
    """BentoML 1.4.39's TimeoutMiddleware.__call__ with its timer cancelled when the request ends."""
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def started(message: Message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    request = asyncio.ensure_future(self.app(scope, receive, started))
    try:
        await waiter
    except TimeoutError:
        if request.cancel():
            body = f'{{"error": "Not able to process the request in {self.timeout} seconds"}}'.encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 504, "headers": headers})
            await send({"type": "http.response.body", "body": body})
    else:
        await request
    finally:
        timer.cancel()


def install() -> bool:
    """Patch the pinned BentoML version; True when the patch is in place."""
    if bentoml.__version__ != PATCHED_VERSION:
        logger.warning("bentoml %s is not %s: TimeoutMiddleware left as it is", bentoml.__version__, PATCHED_VERSION)
        return False
    traffic.TimeoutMiddleware.__call__ = _timeout_middleware_call  # type: ignore[method-assign]
    return True
