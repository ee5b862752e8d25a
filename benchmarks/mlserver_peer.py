"""Bulk scoring next to MLServer serving the same forest: `python -m benchmarks.mlserver_peer [--seconds S]`.

In one run, on this machine, one server at a time:
1. MLServer 1.7.1 with its scikit-learn runtime (mlserver-sklearn 1.7.1) in a venv of its own (created with
   `--venv DIR`, default .venv-mlserver, when it has no `mlserver`; scikit-learn, joblib and numpy at this venv's
   versions, uvloop < 0.22), serving `estimator.joblib` of the attack classifier in the BentoML store - the very
   forest the service serves as ONNX. Both must agree on 1,000 held-out rows (the validation split of
   training.attack) before anything is timed.
2. Bulk throughput, closed loop, `--connections` connections (default 2) each sending 1,000-flow requests for
   `--seconds`: this service's classify_attack with a JSON body and with an Arrow IPC stream body
   (nids.core.tables), then MLServer's V2 inference endpoint (one FP32 tensor, answered with the classes).
   Flows/s, the server's CPU (its process tree) and the load generator's CPU (this process) per phase.
3. The model alone, in this process, pinned to one core: the ONNX forest's predict_proba on 1,000-row float32
   batches (and scikit-learn's), x the machine's cores: the model-only capacity the API is compared with,
   measured before and after the servers.
With `--profile`, py-spy (in this venv) samples this service's processes during a second Arrow phase and the
report lists where their time goes (samples per kind of process; the API workers' own time per function). With
`--without-log`, one more Arrow phase on a service started with NIDS_PREDICTION_LOG_ENABLED=false. Prints Markdown;
writes JSON under loadtest/results/benchmarks/.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml
import joblib
import numpy as np
import orjson
import psutil
import pyarrow as pa
import sklearn

from loadtest.run import REPO, RESULTS, free_port, git_version, serve, stop_group
from nids.core.columns import validate_flows
from nids.core.features import ATTACK_FEATURES
from nids.core.settings import get_settings
from nids.core.tables import ARROW_STREAM
from nids.models.artifacts import load_model
from training.attack import AttackConfig, load_attack_frame
from training.data import LABEL, SOURCE, deduplicate_and_split, rows_of

ROWS = 1_000
MLSERVER = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22")
MODEL = "attack-classifier"
READY_SECONDS = 180


def held_out(n: int) -> list[dict[str, Any]]:
    """The first `n` rows of the attack classifier's validation split (rows it never trained on), spaced names."""
    config = AttackConfig()
    frame, _ = load_attack_frame(config)
    split = deduplicate_and_split(
        frame, ATTACK_FEATURES, strata=[SOURCE, LABEL], validation_fraction=config.validation_fraction,
        seed=config.seed,
    )  # fmt: skip
    return [
        {name: float(value) for name, value in row.items()}
        for row in rows_of(split.validation.head(n), ATTACK_FEATURES)
    ]


def ensure_venv(path: Path) -> Path:
    """The venv's `mlserver`, installed there first if missing (pinned; the forest's libraries at our versions)."""
    binary = path / "bin" / "mlserver"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        ours = [f"scikit-learn=={sklearn.__version__}", f"joblib=={joblib.__version__}", f"numpy=={np.__version__}"]
        subprocess.run([str(path / "bin" / "pip"), "install", "-q", *MLSERVER, *ours], check=True)
    return binary


@contextlib.contextmanager
def mlserver(binary: Path, estimator: Path, workers: int, log: Path) -> Iterator[tuple[str, int]]:
    """MLServer on free 127.0.0.1 ports serving `estimator` with the scikit-learn runtime; yields (url, pid)."""
    with tempfile.TemporaryDirectory(prefix="nids-mlserver-") as scratch:
        root = Path(scratch)
        shutil.copy(estimator, root / "model.joblib")
        port = free_port()
        settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
                    "parallel_workers": workers}  # fmt: skip
        (root / "settings.json").write_text(json.dumps(settings))
        model = {
            "name": MODEL,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib"},
        }
        (root / "model-settings.json").write_text(json.dumps(model))
        with log.open("wb") as output:
            process = subprocess.Popen([str(binary), "start", str(root)], cwd=root, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + READY_SECONDS
            while not _ready(f"{url}/v2/models/{MODEL}/ready"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"MLServer did not get ready:\n{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.5)
            yield url, process.pid
        finally:
            stop_group(process, 30)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def v2_body(X: np.ndarray) -> bytes:
    tensor = {"name": "flows", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}
    return orjson.dumps({"inputs": [tensor]})


def arrow_body(flows: list[dict[str, Any]]) -> bytes:
    table = pa.Table.from_pylist(flows)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def post(url: str, path: str, body: bytes, content_type: str) -> Any:
    request = urllib.request.Request(f"{url}{path}", data=body, headers={"content-type": content_type})
    with urllib.request.urlopen(request, timeout=120) as response:
        return orjson.loads(response.read())


def tree_cpu(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def closed_loop(
    url: str, path: str, body: bytes, content_type: str, connections: int, seconds: float, server_pid: int
) -> dict[str, float]:
    """`connections` keep-alive connections sending `body` back to back for `seconds`; flows/s and CPU."""
    host, port = url.removeprefix("http://").split(":")
    done = [0] * connections
    failed: list[str] = []
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        try:
            while time.perf_counter() < stop and not failed:
                conn.request("POST", path, body, {"content-type": content_type})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failed.append(f"{response.status}")
                done[i] += 1
        finally:
            conn.close()

    me, machine = psutil.Process(), psutil.cpu_times()
    cpu_me, cpu_server, start = sum(me.cpu_times()[:2]), tree_cpu(server_pid), time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"{path}: answered {failed[0]}")
    after = psutil.cpu_times()
    busy = (sum(after) - after.idle) - (sum(machine) - machine.idle)
    generator = sum(me.cpu_times()[:2]) - cpu_me
    server = tree_cpu(server_pid) - cpu_server
    return {
        "requests": sum(done),
        "seconds": elapsed,
        "flows_per_second": sum(done) * ROWS / elapsed,
        "server_cores": server / elapsed,
        "generator_cores": generator / elapsed,
        "others_cores": max(0.0, busy - server - generator) / elapsed,
    }


def per_core(predict: Callable[[np.ndarray], Any], X: np.ndarray, seconds: float) -> float:
    """Rows/s of `predict` on one core (this process pinned to its first allowed CPU meanwhile)."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        predict(X)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            predict(X)
            calls += 1
        return calls * len(X) / (time.perf_counter() - start)
    finally:
        os.sched_setaffinity(0, allowed)


def profile(pid: int, seconds: float, out: Path) -> dict[str, Any]:
    """py-spy over the server's processes; own samples per function, and a few paths' shares."""
    spy = Path(sys.executable).parent / "py-spy"
    raw = out / "py-spy.txt"
    command = [str(spy), "record", "--pid", str(pid), "--subprocesses", "--duration", str(int(seconds)),
               "--format", "raw", "--output", str(raw), "--nonblocking"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return {"process": process, "raw": raw}


def summarise(raw: Path) -> dict[str, Any]:
    """Samples per kind of process (API workers, prediction-log writers), and the workers' own time per function."""
    own: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        kind = "log writer" if "nids.observability.process" in stack else "API worker" if len(frames) > 2 else "server"
        kinds[kind] += n
        if kind == "API worker" and not _waiting(frames[-1]):
            own[_frame(frames[-1])] += n
    return {"processes": dict(kinds), "worker_busy": sum(own.values()), "own": own.most_common(20)}


_WAITS = ("Condition.wait", "EpollSelector.select", "Connection._recv", "Event.wait", "Thread.join", "select ")


def _waiting(frame: str) -> bool:
    """A thread blocked in a wait (py-spy samples them unless it can tell they are idle)."""
    return frame.startswith(_WAITS)


def _frame(frame: str) -> str:
    """`function (path/file.py:line)` -> `function (file.py)`."""
    function, _, where = frame.partition(" (")
    return f"{function} ({Path(where.split(':')[0]).name})" if where else function


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each bulk phase")
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-mlserver", help="MLServer's own venv")
    parser.add_argument("--profile", action="store_true", help="py-spy the service during a second Arrow phase")
    parser.add_argument("--without-log", action="store_true", help="an Arrow phase with the prediction log off too")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    settings = get_settings()
    model = load_model(settings.attack_model_tag)
    estimator_path = Path(bentoml.models.get(model.tag).path_of("estimator.joblib"))
    estimator = joblib.load(estimator_path)
    flows = held_out(ROWS)
    batch = validate_flows("attack", flows)
    X = batch.matrix(model)
    binary = ensure_venv(args.venv)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / "benchmarks" / f"mlserver-peer-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"model_before": {
        "onnx_rows_per_second_per_core": per_core(model.predict_proba, X, 5),
        "sklearn_rows_per_second_per_core": per_core(estimator.predict_proba, X, 5),
    }}  # fmt: skip
    json_body = orjson.dumps({"flows": flows})
    columns = arrow_body(flows)
    os.environ.setdefault("NIDS_DATA_DIR", str(out / "var"))
    with serve("service:NIDSService", out / "service.log") as (url, pid):
        ours = [a["attack_type_encoded"] for a in post(url, "/classify_attack", json_body, "application/json")]
        assert post(url, "/classify_attack", columns, ARROW_STREAM) == post(
            url, "/classify_attack", json_body, "application/json"
        ), "Arrow and JSON answers differ"
        for name, body, kind in (("api_json", json_body, "application/json"), ("api_arrow", columns, ARROW_STREAM)):
            figures[name] = closed_loop(url, "/classify_attack", body, kind, args.connections, args.seconds, pid)
        if args.profile:
            spy = profile(pid, args.seconds, out)
            closed_loop(url, "/classify_attack", columns, ARROW_STREAM, args.connections, args.seconds + 2, pid)
            spy["process"].wait(timeout=120)
            figures["profile"] = summarise(spy["raw"])
    if args.without_log:
        os.environ["NIDS_PREDICTION_LOG_ENABLED"] = "false"
        with serve("service:NIDSService", out / "service-log-off.log") as (url, pid):
            phase = closed_loop(url, "/classify_attack", columns, ARROW_STREAM, args.connections, args.seconds, pid)
            figures["api_arrow_log_off"] = phase
        del os.environ["NIDS_PREDICTION_LOG_ENABLED"]
    with mlserver(binary, estimator_path, cores, out / "mlserver.log") as (url, pid):
        answer = post(url, f"/v2/models/{MODEL}/infer", v2_body(X), "application/json")
        theirs = [int(v) for v in answer["outputs"][0]["data"]]
        figures["agreement"] = sum(a == b for a, b in zip(ours, theirs, strict=True))
        assert figures["agreement"] == ROWS, f"MLServer and the service agree on {figures['agreement']} of {ROWS} rows"
        path = f"/v2/models/{MODEL}/infer"
        figures["mlserver"] = closed_loop(
            url, path, v2_body(X), "application/json", args.connections, args.seconds, pid
        )
    figures["model_after"] = {
        "onnx_rows_per_second_per_core": per_core(model.predict_proba, X, 5),
        "sklearn_rows_per_second_per_core": per_core(estimator.predict_proba, X, 5),
    }
    report = markdown(figures, cores, model.tag, args)
    print(report)
    document = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "git": git_version(),
                "python": platform.python_version(), "cores": cores, "load_average": os.getloadavg(),
                "model": model.tag, "connections": args.connections, "figures": figures}  # fmt: skip
    (out / "results.json").write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
    print(f"results: {out}")


def markdown(figures: dict[str, Any], cores: int, tag: str, args: argparse.Namespace) -> str:
    onnx = [figures[k]["onnx_rows_per_second_per_core"] for k in ("model_before", "model_after")]
    capacity = sum(onnx) / 2 * cores
    mlserver_rate = figures["mlserver"]["flows_per_second"]
    lines = [
        f"Model `{tag}`; {ROWS:,}-flow requests, {args.connections} connections, {args.seconds:g} s per phase; "
        f"load average at the end {os.getloadavg()[0]:.1f}; MLServer and the service agree on "
        f"{figures['agreement']:,} of {ROWS:,} held-out rows.",
        "",
        "| path | flows/s | vs MLServer | vs model-only capacity | server CPU | generator CPU | others' CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in (("api_arrow", "this service, Arrow IPC body"), ("api_json", "this service, JSON body"),
                        ("mlserver", "MLServer 1.7.1 (sklearn runtime), V2 JSON tensor")):  # fmt: skip
        f = figures[name]
        lines.append(
            f"| {label} | **{f['flows_per_second']:,.0f}** | {f['flows_per_second'] / mlserver_rate:.2f}x | "
            f"{f['flows_per_second'] / capacity:.0%} | {f['server_cores']:.2f} cores | "
            f"{f['generator_cores']:.2f} cores | {f['others_cores']:.2f} cores |"
        )
    sk = [figures[k]["sklearn_rows_per_second_per_core"] for k in ("model_before", "model_after")]
    lines += [
        "",
        f"Model-only capacity: ONNX {onnx[0]:,.0f} / {onnx[1]:,.0f} rows/s per core (before / after) x {cores} "
        f"cores = {capacity:,.0f} rows/s; scikit-learn {sk[0]:,.0f} / {sk[1]:,.0f} rows/s per core.",
    ]
    if "api_arrow_log_off" in figures:
        f = figures["api_arrow_log_off"]
        lines.insert(
            6,
            f"| this service, Arrow IPC body, prediction log off | **{f['flows_per_second']:,.0f}** | "
            f"{f['flows_per_second'] / mlserver_rate:.2f}x | {f['flows_per_second'] / capacity:.0%} | "
            f"{f['server_cores']:.2f} cores | {f['generator_cores']:.2f} cores | {f['others_cores']:.2f} cores |",
        )
    if "profile" in figures:
        p = figures["profile"]
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in p["processes"].items())
        lines += [
            "",
            f"py-spy samples of the service's processes during an Arrow phase: {kinds}. The API workers' busy "
            f"samples ({p['worker_busy']:,}, waits left out), own time per function:",
            "",
        ]
        lines += [f"- {n / p['worker_busy']:.1%} {name}" for name, n in p["own"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
