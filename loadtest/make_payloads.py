"""Write the load-test pools of held-out real flows: `python -m loadtest.make_payloads`.

- threat: rows of KDDTest+, the NSL-KDD test file the threat detector never trains on;
- attack: rows of the attack classifier's validation split (training.attack's own split, same seed), the
  rows it is evaluated on and never trained on; every class present there is represented, and half of the
  flows use the original spaced CICFlowMeter names, half the snake_case aliases, as clients send both.
Every flow is checked against the service's request schemas before it is written.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtest.payloads import POOL_FILES
from nids.core.features import ATTACK_CLASSES, ATTACK_FEATURES, THREAT_CLASSES, THREAT_FEATURES, snake_case
from nids.core.schemas import AttackFlow, ThreatFlow
from training.attack import AttackConfig, load_attack_frame
from training.data import LABEL, NSL_KDD_TEST, SOURCE, deduplicate_and_split, load_nsl_kdd, rows_of

SEED = 20260401
THREAT_FLOWS = 1000
ATTACK_FLOWS = 800
MIN_PER_CLASS = 5


def compact(value: float | str) -> float | int | str:
    """Integral floats as JSON integers (as CICFlowMeter and NSL-KDD write counts); the rest unchanged."""
    if isinstance(value, str) or not float(value).is_integer():
        return value
    return int(value)


def threat_pool(rng: np.random.Generator, size: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    test = load_nsl_kdd(NSL_KDD_TEST)
    picked = test.frame.iloc[np.sort(rng.choice(len(test.frame), size=size, replace=False))]
    flows = [{name: compact(value) for name, value in row.items()} for row in rows_of(picked, THREAT_FEATURES)]
    counts = Counter(THREAT_CLASSES[label] for label in picked[LABEL])
    return flows, {
        "source": f"{Path(test.path).name} (sha256 {test.sha256}): the NSL-KDD test file, never used in training",
        "rule": f"{size} rows drawn uniformly without replacement (numpy default_rng({SEED}))",
        "label_counts": dict(sorted(counts.items())),
    }


def stratified_rows(labels: np.ndarray, rng: np.random.Generator, size: int, minimum: int) -> np.ndarray:
    """Row indices: up to `minimum` of every label first, then uniformly drawn rows up to `size`."""
    chosen: list[int] = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        chosen.extend(rng.choice(rows, size=min(minimum, rows.size), replace=False).tolist())
    rest = np.setdiff1d(np.arange(labels.size), chosen)
    chosen.extend(rng.choice(rest, size=size - len(chosen), replace=False).tolist())
    return np.array(chosen)


def attack_pool(rng: np.random.Generator, size: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    config = AttackConfig()
    frame, files = load_attack_frame(config)
    split = deduplicate_and_split(
        frame, ATTACK_FEATURES, strata=[SOURCE, LABEL], validation_fraction=config.validation_fraction, seed=config.seed
    )
    held_out: pd.DataFrame = split.validation
    picked = held_out.iloc[stratified_rows(held_out[LABEL].to_numpy(), rng, size, MIN_PER_CLASS)]
    flows = []
    for i, row in enumerate(rows_of(picked, ATTACK_FEATURES)):
        spaced = i % 2 == 0
        flows.append({(name if spaced else snake_case(name)): compact(value) for name, value in row.items()})
    pairs = zip(picked[LABEL], picked[SOURCE], strict=True)
    counts = Counter(f"{ATTACK_CLASSES[label]} ({source})" for label, source in pairs)
    sources = ", ".join(f"{Path(f.path).name} (sha256 {f.sha256})" for f in files)
    return flows, {
        "source": f"validation split of training.attack over {sources}: rows the classifier never trains on",
        "rule": (
            f"{split.rule}; then up to {MIN_PER_CLASS} rows of every class and uniformly drawn rows up to {size} "
            f"(numpy default_rng({SEED})); even-numbered flows use the spaced CICFlowMeter names, odd ones snake_case"
        ),
        "label_counts": dict(sorted(counts.items())),
    }


def validate(flows: list[dict[str, Any]], schema: type[ThreatFlow] | type[AttackFlow]) -> None:
    for flow in flows:
        schema.model_validate(flow)


def write_pool(path: Path, flows: list[dict[str, Any]], about: dict[str, Any]) -> None:
    """One flow per line: compact, yet reviewable in a diff."""
    header = json.dumps({**about, "seed": SEED, "count": len(flows)}, ensure_ascii=False, indent=1)[:-2]
    lines = ",\n".join(json.dumps(flow, separators=(",", ":"), ensure_ascii=False) for flow in flows)
    path.write_text(f'{header},\n "flows": [\n{lines}\n]}}\n', encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threat-flows", type=int, default=THREAT_FLOWS)
    parser.add_argument("--attack-flows", type=int, default=ATTACK_FLOWS)
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    for kind, (flows, about), schema in (
        ("threat", threat_pool(rng, args.threat_flows), ThreatFlow),
        ("attack", attack_pool(rng, args.attack_flows), AttackFlow),
    ):
        validate(flows, schema)
        write_pool(POOL_FILES[kind], flows, about)
        print(f"{POOL_FILES[kind]}: {len(flows)} flows, {POOL_FILES[kind].stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
