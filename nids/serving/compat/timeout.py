"""BentoML 1.4.39's TimeoutMiddleware schedules a timer per request and never cancels it, so each request's context
(tracing span, futures, locks) stays alive for the whole traffic timeout. At a few hundred requests per second every
full garbage collection then walks 100k+ extra objects and stalls the event loop for 50-130 ms: p99 spikes and 503s
from the batcher (BENCHMARKS.md). `install()` replaces its `__call__` with the same code plus the cancel.

Upstream: no issue filed for the timer (searched bentoml/BentoML's issues; the nearest, #5642, is about the same
middleware leaving sync handlers running after a timeout). Fallback: BentoML's own middleware (the timer stays).
"""

from __future__ import annotations

import asyncio

from bentoml._internal.server.http import traffic

from nids.serving.asgi import Message, Receive, Scope, Send
from nids.serving.compat import applies

UPSTREAM = (traffic.TimeoutMiddleware.__call__, "fd8b9e3da28ed2b44cfd508d641617e049fcd4986138197ce7bb227332505896")


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
    if traffic.TimeoutMiddleware.__call__ is _timeout_middleware_call:
        return True
    if not applies("the TimeoutMiddleware timer fix", "each request's timer lives for the traffic timeout", UPSTREAM):
        return False
    traffic.TimeoutMiddleware.__call__ = _timeout_middleware_call  # type: ignore[method-assign]
    return True
