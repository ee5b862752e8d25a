"""Every curl and Python example of README.md and docs/api.md runs as written against a live server.

Blocks are taken from the Markdown itself, so the docs cannot drift: bash blocks (those that do not start,
build or containerize a server) run with `set -euo pipefail` and curl failing on any HTTP error; each Python
block of docs/api.md runs in a namespace of its own, as a reader pasting just that one would (so each has its
own imports, address and token). Only the address changes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, Server

pytestmark = [pytest.mark.integration]

DOCS = [REPO / "README.md", REPO / "docs" / "api.md"]
# commands that start, build or containerize a server, or need a client or a broker this test does not have
NOT_RUN = re.compile(
    r"^\s*(?:[A-Z_]+=\S+\s+)*(make|\.venv/bin/bentoml|bentoml|docker|\.venv/bin/st|websocat)\b", re.MULTILINE
)
# the tokens the examples read from the environment, as a deployment would set them
TOKENS = {"NIDS_ADMIN_TOKEN": "doc-examples-admin-token", "NIDS_SENSOR_TOKEN": "doc-examples-sensor-token"}


def blocks(path: Path, language: str) -> list[str]:
    """The blocks of one language, less those that open with `# not run: <why>` (they name the test that runs them)."""
    found = re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [block for block in found if not block.startswith("# not run: ")]


def local(text: str, server: Server) -> str:
    address = server.url.removeprefix("http://")
    return text.replace("http://localhost:3000", server.url).replace("localhost:3000", address)


@pytest.fixture(scope="module")
def server(model_store: Any, serve: Callable[..., Server]) -> Server:
    return serve(model_store.home, **TOKENS)


BASH = [
    (path.name, i, block) for path in DOCS for i, block in enumerate(blocks(path, "bash")) if not NOT_RUN.search(block)
]


def run_bash(server: Server, block: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    script = "set -euo pipefail\n" + local(block, server).replace("curl -s ", "curl -sS --fail-with-body ")
    return subprocess.run(
        ["bash", "-c", script], cwd=REPO, env=os.environ | env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(("doc", "index", "block"), BASH, ids=[f"{doc}-bash-{i}" for doc, i, _ in BASH])
def test_curl_examples_run_as_written(server: Server, doc: str, index: int, block: str) -> None:
    done = run_bash(server, block, TOKENS)
    assert done.returncode == 0, (
        f"{doc} bash block {index} failed:\n{block}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    )


@pytest.mark.parametrize(("doc", "index", "block"), BASH, ids=[f"{doc}-bash-{i}" for doc, i, _ in BASH])
def test_curl_examples_without_tokens_do_what_the_docs_say(server: Server, doc: str, index: int, block: str) -> None:
    """The token variables empty, as for a reader who has none: a sensor's call is answered as dry-run, an admin's
    refused with 401 naming the scope (the server listens on loopback: reads need no token)."""
    done = run_bash(server, block, dict.fromkeys(TOKENS, ""))
    if "NIDS_ADMIN_TOKEN" in block:
        assert done.returncode != 0 and "needs a token of scope admin" in done.stdout, done.stdout[-2000:]
    else:
        assert done.returncode == 0, f"{doc} bash block {index}:\n{block}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"


# each block in a namespace of its own (one interpreter: the imports are paid once, the names are not shared)
ON_ITS_OWN = """
import json, sys, traceback
for index, block in enumerate(json.load(sys.stdin)):
    try:
        exec(compile(block, f"docs/api.md python block {index}", "exec"), {"__name__": "__main__"})
    except BaseException:
        traceback.print_exc()
        sys.exit(f"docs/api.md python block {index} failed (run on its own)")
"""


def test_each_python_example_runs_on_its_own(server: Server) -> None:
    examples = [local(block, server) for block in blocks(REPO / "docs" / "api.md", "python")]
    done = subprocess.run(
        [sys.executable, "-c", ON_ITS_OWN],
        input=json.dumps(examples),
        cwd=REPO,
        env=os.environ | TOKENS,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_examples_cover_every_api() -> None:
    text = "\n".join(block for path in DOCS for language in ("bash", "python") for block in blocks(path, language))
    for api in ("detect_threat", "classify_attack", "self_heal", "analyze", "analyze_csv", "model_info"):
        assert f"/{api} " in text or f".{api}(" in text, api
    for api in ("healing_actions", "healing_revert", "healing_enforcement"):
        assert api in text, api
