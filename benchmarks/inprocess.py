"""In-process inference cost per flow: `python -m benchmarks.inprocess [--seconds 0.5]`.

For each model and each inference form stored with it (ONNX Runtime, scikit-learn), the time of one
`LoadedModel.predict_proba` call at batch 1, 32, 256 and 1,024 on held-out real flows (loadtest/payloads), as
the median of repeated timed blocks. Then, at batch 1,024 and in the form the service uses, the cost of every
stage of the service's hot path per flow: JSON body -> decoded value (nids.serving.parsing.decode) -> validated
columns (nids.core.columns.validate_flows), batch -> matrix, model, pipeline call (matrix + model + scores),
scores -> JSON. Prints Markdown tables; writes JSON under
loadtest/results/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.payloads import load_pool
from loadtest.run import RESULTS, git_version
from nids.core import pipeline
from nids.core.columns import validate_flows
from nids.core.encoding import to_matrix
from nids.core.features import ATTACK_FEATURE_BY_SNAKE, ATTACK_MODEL_NAME, THREAT_MODEL_NAME
from nids.core.model import ActiveModels, LoadedModel
from nids.models.artifacts import load_model
from nids.serving.metrics import service_metrics
from nids.serving.parsing import decode

BATCHES = (1, 32, 256, 1024)
HOT_PATH_BATCH = 1024
TARGET_US_PER_FLOW = 20.0


def per_call_seconds(call: Callable[[], object], seconds: float) -> float:
    """Median time of one call over timed blocks (each block >= 20 ms), measured for about `seconds`."""
    call()  # warm-up
    start = time.perf_counter()
    call()
    once = max(time.perf_counter() - start, 1e-7)
    inner = max(1, int(0.02 / once))
    blocks: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(blocks) < 5 or time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(inner):
            call()
        blocks.append((time.perf_counter() - start) / inner)
    return statistics.median(blocks)


def canonical(flow: dict[str, Any]) -> dict[str, Any]:
    """Attack flows of the pool use spaced names or snake_case; the matrix needs the spaced names."""
    return {ATTACK_FEATURE_BY_SNAKE.get(name, name): value for name, value in flow.items()}


def matrix(model: LoadedModel, kind: str, rows: int) -> np.ndarray:
    pool = [canonical(flow) for flow in load_pool(kind)]
    cycled = [pool[i % len(pool)] for i in range(rows)]
    return to_matrix(cycled, model.feature_names, model.encoders)


def bench_forms(tags: dict[str, str], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for kind, tag in tags.items():
        for form in ("onnx", "sklearn"):
            model = load_model(tag, prefer_onnx=form == "onnx")
            if model.inference_form != form:
                continue
            X = matrix(model, kind, max(BATCHES))
            for batch in BATCHES:
                part = X[:batch]
                per_call = per_call_seconds(lambda part=part, model=model: model.predict_proba(part), seconds)
                rows.append({"model": model.tag, "form": form, "batch": batch, "us_per_call": per_call * 1e6,
                             "us_per_flow": per_call * 1e6 / batch})  # fmt: skip
    return rows


def bench_hot_path(tags: dict[str, str], seconds: float) -> list[dict[str, Any]]:
    """Per-flow cost of each stage of detect_threat / classify_attack at HOT_PATH_BATCH flows."""
    models = ActiveModels(threat=load_model(tags["threat"]), attack=load_model(tags["attack"]))
    metrics = service_metrics()  # the service counts every prediction: so does the measured pipeline call
    stages = []
    plans = (
        ("detect_threat", "threat", pipeline.detect_threats, models.threat),
        ("classify_attack", "attack", pipeline.classify_attacks, models.attack),
    )
    for api, kind, run, model in plans:
        pool = load_pool(kind)
        body = json.dumps({"flows": [pool[i % len(pool)] for i in range(HOT_PATH_BATCH)]}).encode()
        rows = decode(body)["flows"]
        flows = validate_flows(kind, rows)
        X = flows.matrix(model)
        scores = run(models, flows, metrics)
        steps: list[tuple[str, Callable[[], object]]] = [
            ("decode the JSON body", lambda body=body: decode(body)),
            ("validate rows into columns", lambda kind=kind, rows=rows: validate_flows(kind, rows)),
            ("batch -> float32 matrix", lambda flows=flows, model=model: flows.matrix(model)),
            (f"predict_proba ({model.inference_form})", lambda X=X, model=model: model.predict_proba(X)),
            ("pipeline call (matrix + model + scores)", lambda run=run, flows=flows: run(models, flows, metrics)),
            ("serialise scores to JSON", lambda scores=scores: scores.json()),
        ]
        for stage, call in steps:
            per_call = per_call_seconds(call, seconds)
            stages.append({"api": api, "stage": stage, "us_per_flow": per_call * 1e6 / HOT_PATH_BATCH})
    return stages


def markdown(forms: list[dict[str, Any]], stages: list[dict[str, Any]]) -> str:
    lines = [
        "| model | form | batch | us per call | us per flow |",
        "|---|---|---|---|---|",
        *(f"| {r['model']} | {r['form']} | {r['batch']:,} | {r['us_per_call']:,.1f} | {r['us_per_flow']:,.2f} |"
          for r in forms),
        "",
        f"Service hot path at batch {HOT_PATH_BATCH:,}, per flow (the service's inference form):",
        "",
        "| API | stage | us per flow |",
        "|---|---|---|",
        *(f"| {s['api']} | {s['stage']} | {s['us_per_flow']:,.2f} |" for s in stages),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threat-tag", default=f"{THREAT_MODEL_NAME}:latest")
    parser.add_argument("--attack-tag", default=f"{ATTACK_MODEL_NAME}:latest")
    parser.add_argument("--seconds", type=float, default=0.5, help="measuring time per figure")
    args = parser.parse_args()
    tags = {"threat": args.threat_tag, "attack": args.attack_tag}
    forms = bench_forms(tags, args.seconds)
    stages = bench_hot_path(tags, args.seconds)
    text = markdown(forms, stages)
    print(text)
    out = RESULTS / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"inprocess-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    document = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "git": git_version(),
                "python": platform.python_version(), "forms": forms, "hot_path": stages}  # fmt: skip
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    print(f"results: {Path(path)}")


if __name__ == "__main__":
    main()
