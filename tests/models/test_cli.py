"""The lifecycle CLI without a server: export, verify, sign, import, activate, deactivate, list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bentoml
import pytest

from nids.models.cli import main
from tests.conftest import clone_model_version

pytestmark = pytest.mark.filterwarnings("ignore:.*__get_pydantic_core_schema__:DeprecationWarning")  # BentoML's


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("NIDS_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("NIDS_MODEL_SIGNING_KEY", "cli-test-key")

    def run(*argv: str) -> tuple[int, Any]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, (json.loads(out) if code == 0 else err)

    return run


def test_export_verify_import_activate_deactivate(cli, model_store, tmp_path: Path) -> None:
    from nids.models.state import open_lifecycle_store

    store = open_lifecycle_store(f"sqlite:///{tmp_path / 'var' / 'model-lifecycle.sqlite3'}")
    store.initialise("threat_detector", model_store.threat_tag, "as the service records it at its first start")
    store.close()
    tag = clone_model_version(model_store.threat_tag, "threat_detector")
    try:
        package = tmp_path / "p.bentomodel"
        assert cli("export", tag, str(package))[1]["signed"] is True
        assert cli("verify", str(package))[1]["verified"] == tag
        plain = tmp_path / "plain.bentomodel"
        bentoml.models.export_model(tag, str(plain))
        code, err = cli("verify", str(plain))
        assert code == 1 and "unsigned" in err
        assert cli("sign", str(plain), str(tmp_path / "s.bentomodel"))[1]["signed"] == tag
        bentoml.models.delete(tag)
        code, entry = cli("import", str(package), "--model-type", "threat_detector", "--description", "from CI")
        assert code == 0 and (entry["tag"], entry["is_active"], entry["description"]) == (tag, False, "from CI")
        code, entry = cli("activate", tag)
        assert code == 0 and entry["is_active"] and entry["activated_by"].startswith("cli:")
        listed = {v["tag"]: v["is_active"] for v in cli("list", "--model-type", "threat_detector")[1]["versions"]}
        assert listed[tag] and not listed[model_store.threat_tag]
        code, entry = cli("deactivate", tag)
        assert code == 0 and entry["tag"] == model_store.threat_tag
        code, err = cli("deactivate", model_store.threat_tag)
        assert code == 1 and "refused (409)" in err
    finally:
        if tag in {str(m.tag) for m in bentoml.models.list()}:
            bentoml.models.delete(tag)
