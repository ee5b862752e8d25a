"""The fail-closed checks of nids.serving.compat: every patch applies on the pinned BentoML with the upstream
sources it was written against, and on anything else falls back (or refuses to start) and says why.

`test_every_upstream_source_is_the_one_patched` fails on any BentoML (or CPython, for asyncio) whose code under a
patch changed: read that code again, then re-record the digest or drop the patch.
"""

from __future__ import annotations

import logging
from typing import Any

import bentoml
import pytest
from _bentoml_impl.serde import JSONSerde
from bentoml._internal.server.http import traffic

from nids.serving import compat
from nids.serving.compat import accept, batching, endpoint, listen, respawn, serde, timeout

pytestmark = pytest.mark.filterwarnings("ignore:.*__get_pydantic_core_schema__:DeprecationWarning")  # BentoML's

UPSTREAMS: dict[str, tuple[tuple[Any, str], ...]] = {
    "timeout": (timeout.UPSTREAM,),
    "respawn": (respawn.UPSTREAM,),
    "endpoint": endpoint.UPSTREAM,
    "serde": serde.UPSTREAM,
    "batching": batching.UPSTREAM,
    "accept": (accept.UPSTREAM,),
    "listen": (listen.UPSTREAM,),
}


@pytest.mark.parametrize("name", sorted(UPSTREAMS))
def test_every_upstream_source_is_the_one_patched(name: str) -> None:
    assert bentoml.__version__ == compat.PATCHED_VERSION
    for obj, digest in UPSTREAMS[name]:
        assert compat.source_digest(obj) == digest, f"{name}: {obj.__qualname__} changed upstream"
        assert compat.applies(name, "-", (obj, digest))


def test_another_version_or_source_is_not_patched_and_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "nids.compat")
    assert not compat.applies("the feature", "what happens instead", (compat.applies, "0" * 64))
    assert "upstream source of applies is not the one" in caplog.text and "what happens instead" in caplog.text
    monkeypatch.setattr(bentoml, "__version__", "1.4.40")
    assert not compat.applies("the feature", "falls back", timeout.UPSTREAM)
    assert "bentoml 1.4.40 is not 1.4.39" in caplog.text


def test_on_another_bentoml_each_patch_falls_back_or_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bentoml, "__version__", "1.4.40")
    # as if nothing were patched yet in this process
    monkeypatch.setattr(traffic.TimeoutMiddleware, "__call__", timeout.UPSTREAM[0])
    monkeypatch.setattr(JSONSerde, "deserialize_model", serde.UPSTREAM[2][0])
    assert not timeout.install()
    assert listen.bound_address() is None
    assert not serde.install_columnar()
    # the guards that cannot run without their patch fail closed: the service does not start
    with pytest.raises(RuntimeError, match=r"SSRF.*does not start; install bentoml==1\.4\.39"):
        serde.install()
    with pytest.raises(RuntimeError, match="cannot be registered"):
        batching.install()
    assert traffic.TimeoutMiddleware.__call__ is timeout.UPSTREAM[0]


# private modules imported outside nids/serving/compat, each read (not patched) and why
PRIVATE = ("_bentoml_impl", "_bentoml_sdk", "bentoml._internal", "asyncio.selector_events", "uvicorn")
READ_ONLY = {
    ("nids/models/lifecycle.py", "bentoml._internal.configuration.containers"): "the store's path (nids.models)",
    ("nids/serving/columnar.py", "_bentoml_impl.serde"): "ColumnarSerde subclasses JSONSerde (registered by compat)",
}


def test_private_upstream_modules_are_imported_only_in_compat() -> None:
    import ast
    from pathlib import Path

    root = Path(compat.__file__).resolve().parents[3]
    found = set()
    for path in (root / "nids").rglob("*.py"):
        relative = path.relative_to(root).as_posix()
        if relative.startswith("nids/serving/compat/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            found |= {(relative, name) for name in names if name.startswith(PRIVATE)}
    assert found == set(READ_ONLY)
