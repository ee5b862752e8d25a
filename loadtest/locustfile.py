"""Locust scenarios of the nids-bento service; normally started by `python -m loadtest.run` (docs/loadtest.md).

Direct use: `locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:3000 -t 30s --scenario
detect_threat --shape steady --rate 200 --results-dir DIR`. One FastHttpUser class sends the scenario's
pre-serialised bodies; the RateShape below sets the users of each phase of the chosen shape; every request is
logged to DIR/requests.csv and the phases to DIR/phases.json for `loadtest.summary`.
"""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, LoadTestShape, events, task
from locust.env import Environment

from loadtest.payloads import Body, request_bodies
from loadtest.recorder import Recorder
from loadtest.scenarios import SCENARIOS
from loadtest.shapes import Phase, add_shape_options, phase_at, schedule

HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


RECORDER = Recorder()


class Load:
    """What the running test sends, set once from the command line (init event) and by the shape."""

    bodies: itertools.cycle[Body]
    period = 0.0  # seconds between two requests of one user; 0: closed loop
    phases: list[Phase]
    ramp = False


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("nids-bento load test")
    group.add_argument("--scenario", choices=sorted(SCENARIOS), default="detect_threat")
    add_shape_options(group)
    group.add_argument("--closed-users", type=int, default=4, help="closed shape: concurrent users")
    group.add_argument("--body-seed", type=int, default=20260401)
    group.add_argument("--results-dir", default="loadtest/results/adhoc", help="requests.csv and phases.json go here")


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    scenario = SCENARIOS[options.scenario]
    bodies = request_bodies(scenario, seed=options.body_seed)
    Load.bodies = itertools.cycle(bodies)
    Load.phases = schedule(
        options.shape,
        rate=options.rate,
        step=options.step,
        step_seconds=options.step_seconds,
        max_rate=options.max_rate,
        spike_factor=options.spike_factor,
        users=options.closed_users,
        per_user_rate=options.per_user_rate,
    )
    Load.ramp = options.shape == "ramp"
    environment.events.request.add_listener(RECORDER.on_request)


@events.quitting.add_listener
def _write(environment: Environment, **_: Any) -> None:
    if environment.parsed_options is not None:
        RECORDER.write(Path(environment.parsed_options.results_dir))


class FlowUser(FastHttpUser):
    """Sends the scenario's bodies on a fixed pacing schedule (`Load.period`), or back to back when closed-loop."""

    connection_timeout = 10.0
    network_timeout = 30.0

    def on_start(self) -> None:
        # spread the users' schedules over one period instead of starting them in lockstep
        gevent.sleep(random.uniform(0, Load.period))
        self._due = time.perf_counter()

    def wait_time(self) -> float:
        if Load.period <= 0:
            return 0.0
        now = time.perf_counter()
        self._due += Load.period
        if self._due < now:  # late by more than the response took: skip the missed slots, never burst
            self._due = now
        return self._due - now

    @task
    def send(self) -> None:
        body = next(Load.bodies)
        with self.client.post(
            body.path,
            data=body.data,
            headers=HEADERS,
            name=body.path,
            context={"flows": body.flows},
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:300]}")
            elif body.marker not in (response.content or b""):
                response.failure(f"reply without {body.marker.decode()}: {(response.text or '')[:300]}")


class RateShape(LoadTestShape):
    """Runs Load.phases: the users of the current phase; a ramp stops after the first step that breaks the SLA."""

    use_common_options = True  # --run-time reaches the shape, which enforces it (Locust does not, with a shape)

    def __init__(self) -> None:
        super().__init__()
        self.current: int | None = None

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        limit = self.runner.environment.parsed_options.run_time if self.runner else None
        index = phase_at(Load.phases, elapsed)
        if index is None or (limit and elapsed >= limit):
            return None
        if index != self.current:
            if Load.ramp and self.current is not None and not RECORDER.last_phase_within_sla():
                return None
            self.current = index
            Load.period = Load.phases[index].period
            RECORDER.begin_phase(Load.phases[index])
        # start or stop users within a second in either direction, so each phase runs at its own rate
        return Load.phases[index].users, float(max(phase.users for phase in Load.phases))
