"""Property-based fuzzing of the served OpenAPI spec (schemathesis): bad input never reaches a 500.

The operations are fuzzed in two parts, each an xdist group of its own, so that `make test` runs them on two
workers (each with its server) side by side: together they are the suite's longest test.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server

# the inference APIs, whose bodies are the largest to generate and to score; the other part fuzzes the rest
INFERENCE = "^/(detect_threat|classify_attack|analyze|analyze_csv|ping|model_info|api/v1/upload/csv)$"
PARTS = {
    "inference": ["--include-path-regex", INFERENCE],
    "the-rest": ["--exclude-path-regex", INFERENCE],
}
# generated cases per operation and phase: ~2,000 requests in all
FUZZ_EXAMPLES = 25
FUZZ_SEED = 12

pytestmark = [pytest.mark.integration, pytest.mark.long_running]


@pytest.fixture(scope="module")
def server(model_store: Any, serve: Callable[..., Server]) -> Server:
    return serve(model_store.home, NIDS_ADMIN_TOKEN="fuzz-test-admin-token")


@pytest.mark.parametrize("part", [pytest.param(name, marks=pytest.mark.xdist_group(f"fuzz-{name}")) for name in PARTS])
def test_fuzzing_the_openapi_spec_finds_no_server_error(server: Server, tmp_path: Path, part: str) -> None:
    """schemathesis against /docs.json: every operation of the part, bounded examples, fixed seed; any 5xx fails."""
    command = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{server.url}/docs.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(FUZZ_EXAMPLES),
        "--seed",
        str(FUZZ_SEED),
        "--workers",
        "1",
        "--no-shrink",
        *PARTS[part],
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-6000:]
    assert "passed" in done.stdout
    assert "Traceback" not in server.log.read_text()
