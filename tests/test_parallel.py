"""`make test` runs on xdist workers (`--dist loadgroup`, tests/conftest.py): each module's tests on one worker, so
that a module's server starts once and tests that build on the one before see it. pytest 9.2 silently undid that
(pytest-dev/pytest-xdist#1386): this fails when an upgrade of pytest or pytest-xdist loses the groups again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
CONFTEST = Path(__file__).with_name("conftest.py")
PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def test_a_modules_tests_run_on_one_worker(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("NIDS_TEST_SESSION_DIR", "NIDS_TEST_SESSION_OWNER", "PYTEST_XDIST_WORKER", "CI"):
        monkeypatch.delenv(variable, raising=False)  # the inner run is a session of its own
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # only xdist, loaded below
    pytester.makeconftest(CONFTEST.read_text())
    # the project's own options (--dist loadgroup ...) and markers
    pytester.makepyprojecttoml(PYPROJECT.read_text())
    tests = "".join(f"def test_{i}():\n    pass\n\n\n" for i in range(4))
    pytester.makepyfile(test_first=tests, test_second=tests)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "xdist.plugin", "-n", "2", "-v")
    result.assert_outcomes(passed=8)
    ran = re.findall(r"\[(gw\d)\] .*PASSED (test_\w+\.py)::test_\d(@\S+)?", result.stdout.str())
    assert len(ran) == 8, result.stdout.str()
    for module in ("test_first.py", "test_second.py"):
        assert {suffix for _, name, suffix in ran if name == module} == {f"@{module}"}  # grouped by its module
        assert len({worker for worker, name, _ in ran if name == module}) == 1  # and so on one worker
