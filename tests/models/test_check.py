"""`python -m nids.check TAG` as users run it: a real subprocess against the session's temporary store."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest

from nids.models.artifacts import ESTIMATOR_FILE, ONNX_FILE, load_reference_cases

pytestmark = [pytest.mark.spread, pytest.mark.long_running]  # a subprocess per test


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nids.check", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),  # carries the test session's BENTOML_HOME
        check=False,
    )


def test_check_passes_a_good_model(model_store):
    result = run_check("attack_classifier:latest")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS {model_store.attack_tag}" in result.stdout
    assert "FAIL" not in result.stdout
    assert "inference form: onnx" in result.stdout


def test_check_sklearn_form(model_store):
    result = run_check(model_store.threat_tag, "--sklearn")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "inference form: sklearn" in result.stdout


def test_check_fails_a_tampered_model(model_store, clone_model):
    tag = clone_model(model_store.attack_tag, "check_tampered")
    path = Path(bentoml.models.get(tag).path_of(ONNX_FILE))
    path.write_bytes(path.read_bytes()[:-10])
    result = run_check(tag)
    assert result.returncode == 1
    assert f"{ONNX_FILE:<24} FAIL" in result.stdout
    assert f"{ESTIMATOR_FILE:<24} PASS" in result.stdout
    assert "does not match its recorded sha256" in result.stdout


def test_check_fails_a_model_whose_reference_case_fails(model_store, clone_model):
    cases = list(load_reference_cases(bentoml.models.get(model_store.attack_tag)))
    cases[-1] = dataclasses.replace(cases[-1], expected_score=cases[-1].expected_score - 0.5)
    tag = clone_model(model_store.attack_tag, "check_bad_case", reference_cases=cases)
    result = run_check(tag)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    case_lines = [line.split() for line in lines if line.split()[0].isdigit()]
    assert [words[1] for words in case_lines] == ["PASS"] * (len(cases) - 1) + ["FAIL"]
    assert lines[-1].startswith("FAIL ") and f"1 of {len(cases)} reference cases failed" in lines[-1]


def test_check_unknown_tag_exits_non_zero(model_store):
    result = run_check("attack_classifier:nosuchversion")
    assert result.returncode == 2
    assert "is not in the BentoML store" in result.stdout
