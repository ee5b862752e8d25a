"""What a process says on /readyz, whatever serves it (the service's middleware, the stream worker's port).

`unready` checks return why the process must be drained (503); `degraded` checks return what it serves without
(a store losing rows, an unavailable audit log: 200, listed under `degraded`). '' means fine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Check = Callable[[], str]  # '' when fine, else the reason


def readiness(unready: Iterable[Check], degraded: Iterable[Check]) -> tuple[int, dict[str, Any]]:
    """(status, body) for /readyz: 503 with every reason, else 200 `ready` or `degraded` with what is lost."""
    reasons = [reason for reason in (check() for check in unready) if reason]
    losses = [reason for reason in (check() for check in degraded) if reason]
    if reasons:
        return 503, {"error": "; ".join(reasons), "degraded": losses}
    return 200, {"status": "degraded", "degraded": losses} if losses else {"status": "ready"}
