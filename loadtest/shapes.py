"""Load shapes as schedules of phases, each a target request rate held by a number of paced users.

Pure logic, no Locust: `loadtest.locustfile` turns a schedule into a Locust LoadTestShape, the summary cuts the
recorded requests along the same phases. Every user sends at most `per_user_rate` requests per second on a fixed
pacing schedule (constant throughput), so the offered rate does not depend on response times as long as a
response takes less than one pacing period (1 / per_user_rate = 100 ms by default, the SLA): within the SLA
the load is open-loop; beyond it a late user skips its missed slots instead of bursting.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Shape = Literal["steady", "ramp", "spike", "closed"]
SHAPES: tuple[str, ...] = ("steady", "ramp", "spike", "closed")
DEFAULT_PER_USER_RATE = 10.0


@dataclass(frozen=True)
class Phase:
    name: str
    rate: float | None  # target requests/s; None: closed loop, every user sends as soon as its reply arrives
    users: int
    seconds: float | None  # None: until the run-time limit

    @property
    def period(self) -> float:
        """Seconds between two requests of one user (0: no wait)."""
        return 0.0 if self.rate is None else self.users / self.rate

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def users_for(rate: float, per_user_rate: float = DEFAULT_PER_USER_RATE) -> int:
    if rate <= 0 or per_user_rate <= 0:
        raise ValueError("rates must be positive")
    return max(1, math.ceil(rate / per_user_rate))


def _paced(name: str, rate: float, seconds: float | None, per_user_rate: float) -> Phase:
    return Phase(name=name, rate=rate, users=users_for(rate, per_user_rate), seconds=seconds)


def schedule(
    shape: Shape,
    *,
    rate: float,
    step: float = 100.0,
    step_seconds: float = 10.0,
    max_rate: float = 3000.0,
    spike_factor: float = 5.0,
    users: int = 4,
    per_user_rate: float = DEFAULT_PER_USER_RATE,
) -> list[Phase]:
    """The phases of a shape.

    steady: `rate` until the run-time limit. ramp: `rate`, `rate + step`, ... up to `max_rate`, `step_seconds`
    each (the run stops after the first step that breaks the SLA). spike: `rate`, then `spike_factor * rate`,
    then `rate` again, `step_seconds` each. closed: `users` users without pacing (throughput of bulk requests).
    """
    if shape == "steady":
        return [_paced(f"steady {rate:g} req/s", rate, None, per_user_rate)]
    if shape == "ramp":
        if step <= 0 or max_rate < rate:
            raise ValueError("a ramp needs step > 0 and max_rate >= rate")
        rates = [rate + i * step for i in range(math.floor((max_rate - rate) / step + 1e-9) + 1)]
        return [_paced(f"{value:g} req/s", value, step_seconds, per_user_rate) for value in rates]
    if shape == "spike":
        peak = rate * spike_factor
        return [
            _paced(f"base {rate:g} req/s", rate, step_seconds, per_user_rate),
            _paced(f"spike {peak:g} req/s", peak, step_seconds, per_user_rate),
            _paced(f"recovery {rate:g} req/s", rate, step_seconds, per_user_rate),
        ]
    if shape == "closed":
        return [Phase(name=f"closed loop, {users} users", rate=None, users=users, seconds=None)]
    raise ValueError(f"unknown shape {shape!r}; one of {', '.join(SHAPES)}")


def phase_at(phases: list[Phase], elapsed: float) -> int | None:
    """Index of the phase running `elapsed` seconds into the test; None once the schedule is over."""
    start = 0.0
    for index, phase in enumerate(phases):
        if phase.seconds is None or elapsed < start + phase.seconds:
            return index
        start += phase.seconds
    return None


def total_seconds(phases: list[Phase]) -> float | None:
    """Length of a schedule, None when its last phase runs until the run-time limit."""
    if any(phase.seconds is None for phase in phases):
        return None
    return float(sum(phase.seconds for phase in phases))  # type: ignore[misc]


def add_shape_options(group: Any) -> None:
    """The load-shape options, shared by the runner's command line and the locustfile's."""
    group.add_argument("--shape", choices=SHAPES, default="steady")
    group.add_argument("--rate", type=float, default=200.0, help="requests/s: steady rate, first ramp step, spike base")
    group.add_argument("--step", type=float, default=100.0, help="ramp: requests/s added per step")
    group.add_argument("--step-seconds", type=float, default=10.0, help="ramp and spike: seconds per phase")
    group.add_argument("--max-rate", type=float, default=3000.0, help="ramp: highest step")
    group.add_argument("--spike-factor", type=float, default=5.0, help="spike: peak rate / base rate")
    group.add_argument(
        "--per-user-rate", type=float, default=DEFAULT_PER_USER_RATE, help="paced shapes: requests/s per user at most"
    )
