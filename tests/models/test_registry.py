"""The registry of the served pair: the reason while nothing is served, contracts, atomic switches."""

from __future__ import annotations

from typing import Any

import pytest

from nids.core.errors import ModelsUnavailable
from nids.models.artifacts import ModelIntegrityError, ModelLoadError, load_model
from nids.models.registry import ModelRegistry


def test_registry_without_models_refuses_with_the_reason(model_store: Any) -> None:
    registry = ModelRegistry()
    assert not registry.ready
    with pytest.raises(ModelsUnavailable, match="not loaded yet") as caught:
        registry.active()
    assert caught.value.status_code == 503
    with pytest.raises(Exception, match="not in the BentoML store"):
        registry.load("threat_detector:nosuchversion", model_store.attack_tag, load_model)
    assert "not in the BentoML store" in registry.reason


def test_registry_refuses_a_model_in_the_wrong_role(model_store: Any) -> None:
    registry = ModelRegistry()
    with pytest.raises(ModelLoadError, match="cannot serve as the threat model"):
        registry.load(model_store.attack_tag, model_store.threat_tag, load_model)
    assert not registry.ready and "cannot serve as the threat model" in registry.reason


def test_registry_keeps_the_active_pair_when_a_switch_fails(model_store: Any) -> None:
    registry = ModelRegistry()
    active = registry.load(model_store.threat_tag, model_store.attack_tag, load_model)

    def broken(tag: str) -> Any:
        raise ModelIntegrityError(f"model {tag}: file model.onnx does not match its recorded sha256")

    with pytest.raises(ModelIntegrityError):
        registry.load(model_store.threat_tag, model_store.attack_tag, broken)
    assert registry.active() is active and registry.reason == ""
