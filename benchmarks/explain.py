"""What explanations cost (issue 21): `python -m benchmarks.explain [--seconds 0.5]`.

For both served models (their ONNX form, as served) on held-out real flows (loadtest/payloads), per flow at batch
1, 32 and 256: the pipeline call of the batched API (`detect_threats` / `classify_attacks`) and the explained
twin's (`explain_threats` / `explain_attacks`, top 5), the difference being the explanation's cost. Also what the
batched APIs pay when no explanation is asked: the ASGI middleware's test of the query string. Prints a Markdown
table; writes JSON under loadtest/results/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import platform
import timeit
from datetime import UTC, datetime
from functools import partial
from typing import Any

from benchmarks.inprocess import per_call_seconds
from loadtest.payloads import load_pool
from loadtest.run import RESULTS, git_version
from nids.core import pipeline
from nids.core.columns import validate_flows
from nids.core.features import ATTACK_MODEL_NAME, THREAT_MODEL_NAME
from nids.core.model import ActiveModels
from nids.models.artifacts import load_model
from nids.serving.middleware import EXPLAINED_PATHS

BATCHES = (1, 32, 256)
TOP = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="timing per measurement")
    args = parser.parse_args()
    models = ActiveModels(
        threat=load_model(f"{THREAT_MODEL_NAME}:latest"), attack=load_model(f"{ATTACK_MODEL_NAME}:latest")
    )
    calls = {
        "threat": (pipeline.detect_threats, pipeline.explain_threats),
        "attack": (pipeline.classify_attacks, pipeline.explain_attacks),
    }
    rows: list[dict[str, Any]] = []
    for kind, (plain, explained) in calls.items():
        pool = load_pool(kind)
        for batch in BATCHES:
            flows = validate_flows(kind, pool[:batch])
            explained(models, flows, TOP)  # loads the estimator once, as the first request does
            predict = per_call_seconds(partial(plain, models, flows), args.seconds)
            explain = per_call_seconds(partial(explained, models, flows, TOP), args.seconds)
            rows.append(
                {
                    "model": models.by_role()[kind].tag,
                    "batch": batch,
                    "predict_us_per_flow": 1e6 * predict / batch,
                    "explained_us_per_flow": 1e6 * explain / batch,
                    "explanation_us_per_flow": 1e6 * (explain - predict) / batch,
                }
            )
    scope = {"type": "http", "path": "/detect_threat", "query_string": b""}
    test = timeit.timeit(
        lambda: scope.get("query_string") and scope["path"] in EXPLAINED_PATHS, number=1_000_000
    )  # the test RequestGuard makes on every request
    print("| model | batch | predict (us/flow) | with explanation (us/flow) | explanation alone (us/flow) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['model']} | {row['batch']} | {row['predict_us_per_flow']:.1f} | "
            f"{row['explained_us_per_flow']:.1f} | {row['explanation_us_per_flow']:.1f} |"
        )
    print(f"\nexplain off: the middleware's query-string test costs {1e9 * test / 1_000_000:.0f} ns per request")
    out = RESULTS / "benchmarks" / f"explain-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"git": git_version(), "machine": platform.machine(), "rows": rows, "off_ns_per_request": test * 1000}
    out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
