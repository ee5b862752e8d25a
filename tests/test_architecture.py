"""The layers of docs/architecture.md hold: the import contracts of pyproject.toml, and a core that runs alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    assert lint_imports(config_filename=str(REPO / "pyproject.toml")) == 0


def test_core_and_healing_validate_score_and_decide_without_bentoml() -> None:
    """A stream worker or a batch job imports the core, the engine and the prediction log; no web framework or
    training comes along."""
    script = """
import sys
from nids.core import pipeline
from nids.core.schemas import AnalyzeFlow
from nids.healing.engine import HealingEngine
from nids.observability.log import PredictionLog
from nids.observability.records import PredictionBatch
flow = AnalyzeFlow.model_validate({"service": "http", "flag": "SF", "src_bytes": 1, "dst_bytes": 2, "count": 3,
    "same_srv_rate": 1, "diff_srv_rate": 0, "dst_host_srv_count": 4, "dst_host_same_srv_rate": 1,
    "dst_host_same_src_port_rate": 0})
assert flow.root.service == "http" and pipeline.analyze and HealingEngine and PredictionLog and PredictionBatch
web = {"bentoml", "starlette", "fastapi", "prometheus_client", "training"}
loaded = sorted({name.split(".")[0] for name in sys.modules} & web)
print(",".join(loaded))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
