"""What each load-test scenario sends: the API path, which flows, how many per request, and what a good reply holds.

Kept free of Locust and of the service code, so the runner, the benchmarks and the tests share one definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FlowKind = Literal["threat", "attack", "mixed"]

# the <100 ms SLA of the product, and the stricter goal of issue 4 for single-flow requests at 200 req/s
SLA_MS = 100.0
TARGET_P99_MS = 50.0


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    kind: FlowKind
    flows: int  # flows per request (the most, when min_flows is lower)
    marker: bytes  # bytes every successful response body contains
    description: str
    min_flows: int | None = None  # set: each request carries a random number of flows in [min_flows, flows]
    parts: tuple[str, ...] = ()  # set: the requests of these scenarios in turn (path and marker per request)

    @property
    def flow_range(self) -> tuple[int, int]:
        return (self.flows if self.min_flows is None else self.min_flows), self.flows


def _bulk(api: str, kind: FlowKind, flows: int, marker: bytes) -> Scenario:
    return Scenario(
        name=f"bulk_{api}_{flows}",
        path=f"/{api}",
        kind=kind,
        flows=flows,
        marker=marker,
        description=f"{flows:,} held-out {'threat and attack' if kind == 'mixed' else kind} flows per request",
    )


_THREAT_MARK = b'"prediction_score"'
_ATTACK_MARK = b'"attack_type_name"'
_ANALYZE_MARK = b'"summary"'

SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario("ping", "/ping", "threat", 1, b'"flows"', "no-model endpoint with one threat flow: serving ceiling"),
        Scenario("detect_threat", "/detect_threat", "threat", 1, _THREAT_MARK, "one held-out NSL-KDD flow"),
        Scenario("classify_attack", "/classify_attack", "attack", 1, _ATTACK_MARK, "one held-out CIC-IDS2017 flow"),
        Scenario("analyze", "/analyze", "mixed", 4, _ANALYZE_MARK, "1-4 flows, both schemas mixed", min_flows=1),
        _bulk("detect_threat", "threat", 100, _THREAT_MARK),
        _bulk("detect_threat", "threat", 1000, _THREAT_MARK),
        _bulk("classify_attack", "attack", 100, _ATTACK_MARK),
        _bulk("classify_attack", "attack", 1000, _ATTACK_MARK),
        _bulk("analyze", "mixed", 100, _ANALYZE_MARK),
        _bulk("analyze", "mixed", 1000, _ANALYZE_MARK),
        Scenario(
            "mixed_apis",
            "/",
            "mixed",
            4,
            b"",
            "detect_threat (1 flow), classify_attack (1 flow) and analyze (1-4 flows) requests in turn",
            parts=("detect_threat", "classify_attack", "analyze"),
        ),
    )
}
