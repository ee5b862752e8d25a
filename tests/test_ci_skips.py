"""Under CI=true (.ci/run) a skipped test fails, naming why it skipped; elsewhere it is a skip as usual."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
CONFTEST = Path(__file__).with_name("conftest.py")


@pytest.mark.parametrize(("ci", "outcome"), [("true", {"failed": 1}), ("", {"skipped": 1})])
def test_a_skip_fails_under_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, outcome) -> None:
    monkeypatch.setenv("CI", ci)
    for variable in ("NIDS_TEST_SESSION_DIR", "NIDS_TEST_SESSION_OWNER", "PYTEST_XDIST_WORKER"):
        monkeypatch.delenv(variable, raising=False)  # the inner run is a session of its own
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # and needs none of the installed plugins
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile("import pytest\n\ndef test_needs_a_tool():\n    pytest.skip('the tool is not installed')\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(**outcome)
    if ci:
        result.stdout.fnmatch_lines(["*skipped under CI=true*the tool is not installed*"])
