"""Served latency with a shadow model on and off (issue 21): `python -m benchmarks.shadow [--seconds 20] [--pairs 3]`.

Starts one `bentoml serve` on the store's models (BENTOML_HOME), saves a challenger version of the attack
classifier (a copy of the served estimator under a new tag: the same cost per flow as any challenger of that
size), then runs single-flow `classify_attack` at a steady 200 req/s (`loadtest.run`) alternating the shadow off and on
(share 1: every flow scored twice) for `--pairs` pairs, and prints p50 / p95 / p99 and failures of each run with
the shadow's compared and shed counts, the server's CPU per request, the machine's CPU use and its 1-minute load
average before and after (this machine's speed drifts: compare each on run with the off runs beside it). Raw
results under loadtest/results/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import joblib

from loadtest.run import REPO, RESULTS, serve
from nids.core.features import ATTACK_MODEL_NAME, THREAT_MODEL_NAME
from nids.models.artifacts import ESTIMATOR_FILE, ONNX_FILE, get_store_model, load_reference_cases, save_model

TOKEN = "shadow-benchmark-token"
AUTO = {"files", "library_versions", "git_commit", "created_at", "reference_case_count", "inference_forms"}


def challenger(source_tag: str) -> str:
    """A new version of the served attack classifier: the same estimator and ONNX form under a new tag."""
    source = get_store_model(source_tag)
    model = save_model(
        ATTACK_MODEL_NAME,
        estimator=joblib.load(source.path_of(ESTIMATOR_FILE)),
        metadata={k: v for k, v in source.info.metadata.items() if k not in AUTO},
        reference_cases=load_reference_cases(source),
        onnx_model=Path(source.path_of(ONNX_FILE)).read_bytes(),
    )
    return str(model.tag)


def run(url: str, pid: int, seconds: float, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "loadtest.run", "classify_attack", "--url", url, "--server-pid", str(pid)]
    command += ["--shape", "steady", "--rate", "200", "-t", f"{seconds:g}s", "--out", str(out)]
    subprocess.run(command, cwd=REPO, check=False, capture_output=True)
    return json.loads((out / "summary.json").read_text())


def flows(url: str, outcome: str) -> float:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in lines if "nids_shadow_flows_total{" in line and outcome in line
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    parser.add_argument("--pairs", type=int, default=3, help="off/on pairs, alternating")
    args = parser.parse_args()
    base = RESULTS / "benchmarks" / f"shadow-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    served = str(get_store_model(f"{ATTACK_MODEL_NAME}:latest").tag)
    tag, admin = challenger(served), {"authorization": f"Bearer {TOKEN}"}
    os.environ.update(
        {
            "NIDS_ADMIN_TOKEN": TOKEN,
            "NIDS_DATA_DIR": tempfile.mkdtemp(prefix="nids-shadow-bench-"),
            "NIDS_ATTACK_MODEL_TAG": served,  # the copy is the newest version: serve the one it copies
            "NIDS_THREAT_MODEL_TAG": str(get_store_model(f"{THREAT_MODEL_NAME}:latest").tag),
        }
    )
    rows = []
    with serve("service:NIDSService", base / "server.log") as (url, pid):
        for i in range(2 * args.pairs):
            label = f"{'on' if i % 2 else 'off'} {i // 2 + 1}"
            if label.startswith("on"):
                started = httpx.post(f"{url}/api/v1/models/{tag}/shadow", params={"share": 1}, headers=admin)
                started.raise_for_status()
            before = (flows(url, '"agreed"') + flows(url, '"disagreed"'), flows(url, '"shed"'))
            load = os.getloadavg()[0]
            summary = run(url, pid, args.seconds, base / label.replace(" ", "-"))
            after = (flows(url, '"agreed"') + flows(url, '"disagreed"'), flows(url, '"shed"'))
            if label.startswith("on"):
                params = {"model_type": ATTACK_MODEL_NAME}
                httpx.post(f"{url}/api/v1/models/shadow/stop", params=params, headers=admin).raise_for_status()
            rows.append((label, summary, after[0] - before[0], after[1] - before[1], load, os.getloadavg()[0]))
    print(
        "| run | requests | failures | p50 ms | p95 ms | p99 ms | flows compared | flows shed | server CPU ms/request "
        "| machine CPU | load before / after |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, summary, compared, shed, before_load, after_load in rows:
        overall, cpu = summary["overall"], summary["run"]["cpu"]
        print(
            f"| {label} | {overall['requests']} | {overall['failures']} | {overall['p50']:.1f} | "
            f"{overall['p95']:.1f} | {overall['p99']:.1f} | {compared:.0f} | {shed:.0f} | "
            f"{1000 * cpu['server']['cpu_seconds'] / max(overall['requests'], 1):.2f} | "
            f"{cpu['machine_percent']:.0f}% | {before_load:.1f} / {after_load:.1f} |"
        )
    print(f"\nraw results: {base}")


if __name__ == "__main__":
    main()
