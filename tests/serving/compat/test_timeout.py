"""nids.serving.compat.timeout: TimeoutMiddleware cancels its per-request timer and still times out; upstream's
own middleware still leaves the timer behind (when that test fails, BentoML fixed it: drop the patch)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from nids.serving.compat import timeout


def run(app: Any, seconds: float) -> tuple[list[dict[str, Any]], list[asyncio.TimerHandle]]:
    """Send one HTTP request through TimeoutMiddleware; the messages sent and the timers still pending."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def main() -> list[asyncio.TimerHandle]:
        await TimeoutMiddleware(app, timeout=seconds)({"type": "http"}, receive, send)
        loop = asyncio.get_running_loop()
        return [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]

    return sent, asyncio.run(main())


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow_app(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.sleep(5)


def test_the_timer_is_cancelled_when_the_request_ends() -> None:
    assert timeout.install()
    sent, pending = run(ok_app, seconds=30)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert pending == []  # upstream leaves the 30 s timer (and the request's context) alive


def test_a_slow_request_still_times_out_with_504() -> None:
    assert timeout.install()
    sent, _ = run(slow_app, seconds=0.05)
    assert sent[0]["status"] == 504
    assert "0.05 seconds" in json.loads(sent[1]["body"])["error"]


def test_upstream_still_leaves_the_timer_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TimeoutMiddleware, "__call__", timeout.UPSTREAM[0])
    _, pending = run(ok_app, seconds=30)
    assert [handle._callback.__name__ for handle in pending] == ["_set_timer_out"]  # type: ignore[attr-defined]
