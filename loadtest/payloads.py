"""Request bodies of the load tests, built from the committed pools of held-out real flows.

The pools (`loadtest/payloads/*.json`, written by `python -m loadtest.make_payloads`) hold real rows the
models never trained on. Bodies are drawn from them with a fixed seed and serialised once, before the
load starts, so the load generator spends its CPU on sending, not on JSON encoding.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, NamedTuple

from loadtest.scenarios import Scenario

PAYLOAD_DIR = Path(__file__).resolve().parent / "payloads"
POOL_FILES: dict[str, Path] = {
    "threat": PAYLOAD_DIR / "threat_flows.json",
    "attack": PAYLOAD_DIR / "attack_flows.json",
}
# distinct bodies per scenario: every pooled flow once for single-flow requests, SMALL_BODIES for requests of a
# few flows, fewer for bulk requests (they are large)
SMALL_BODIES = 500
BULK_BODIES = 16
BULK_BODIES_LARGE = 6


def body_count(scenario: Scenario) -> int:
    """How many distinct bodies a scenario other than single-flow cycles through."""
    if scenario.flows <= 10:
        return SMALL_BODIES
    return BULK_BODIES if scenario.flows < 500 else BULK_BODIES_LARGE


Flow = dict[str, Any]


class Body(NamedTuple):
    data: bytes  # JSON {"flows": [...]}
    flows: int
    path: str  # the API it is sent to
    marker: bytes  # what a good reply contains


def load_pool(kind: str) -> list[Flow]:
    """The flows of one pool ('threat' or 'attack')."""
    document = json.loads(POOL_FILES[kind].read_text(encoding="utf-8"))
    return document["flows"]


def _flows_for(scenario: Scenario, pools: dict[str, list[Flow]], rng: random.Random) -> list[Flow]:
    low, high = scenario.flow_range
    count = rng.randint(low, high)
    if scenario.kind == "mixed":
        return [rng.choice(pools[rng.choice(("threat", "attack"))]) for _ in range(count)]
    return rng.choices(pools[scenario.kind], k=count)


def request_bodies(scenario: Scenario, seed: int = 20260401) -> list[Body]:
    """Serialised JSON bodies `{"flows": [...]}` for `scenario`, deterministic for a seed; a scenario of parts
    interleaves its parts' bodies (one of each in turn, as many rounds as its shortest part has bodies)."""
    if scenario.parts:
        from loadtest.scenarios import SCENARIOS

        parts = [request_bodies(SCENARIOS[name], seed) for name in scenario.parts]
        return [body for turn in zip(*parts, strict=False) for body in turn]
    kinds = ("threat", "attack") if scenario.kind == "mixed" else (scenario.kind,)
    pools = {kind: load_pool(kind) for kind in kinds}
    rng = random.Random(seed)
    if scenario.flow_range == (1, 1):
        flows = list(pools[scenario.kind])
        rng.shuffle(flows)
        batches = [[flow] for flow in flows]
    else:
        batches = [_flows_for(scenario, pools, rng) for _ in range(body_count(scenario))]
    return [
        Body(json.dumps({"flows": batch}, separators=(",", ":")).encode(), len(batch), scenario.path, scenario.marker)
        for batch in batches
    ]
