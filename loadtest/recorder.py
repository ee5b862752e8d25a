"""In-memory log of a Locust run: every request and the start of every phase, written out at the end.

No Locust import here (importing Locust monkey-patches the process with gevent), so tests can use it.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from loadtest.shapes import Phase
from loadtest.summary import PHASE_LOG, REQUEST_LOG, REQUEST_LOG_HEADER, RequestLog, phase_result


class Recorder:
    """Every request (start, ms, ok, flows) and the start of every phase, kept in memory and written at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, int, int]] = []
        self.phases: list[dict[str, Any]] = []

    def on_request(
        self,
        start_time: float,
        response_time: float,
        exception: BaseException | None,
        context: dict[str, Any],
        **_: Any,
    ) -> None:
        self.rows.append((start_time, response_time, int(exception is None), context.get("flows", 0)))

    def begin_phase(self, phase: Phase) -> None:
        now = time.time()
        if self.phases:
            self.phases[-1]["end"] = now
        self.phases.append({**phase.as_dict(), "start": now, "end": None})

    def last_phase_within_sla(self) -> bool:
        """Whether the phase now ending kept p99 < SLA, had no failure and reached 90% of its target rate."""
        phase = {**self.phases[-1], "end": time.time()}
        rows = [row for row in self.rows if row[0] >= phase["start"]]
        return phase_result(RequestLog.from_rows(rows), phase).within_sla

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self.phases and self.phases[-1]["end"] is None:
            self.phases[-1]["end"] = time.time()
        with (directory / REQUEST_LOG).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(REQUEST_LOG_HEADER)
            writer.writerows((repr(s), f"{ms:.3f}", ok, flows) for s, ms, ok, flows in self.rows)
        (directory / PHASE_LOG).write_text(json.dumps(self.phases, indent=1), encoding="utf-8")
