"""Training entry points: `python -m training.train_threat`, `training.train_attack`, `training.train_all`.

The CLIs are thin: every field of a model's config dataclass (training.threat.ThreatConfig,
training.attack.AttackConfig) becomes a `--kebab-case` option, so defaults live in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

Config = TypeVar("Config")
_NONE = "none"


def _converter(annotation: str) -> Any:
    base = Path if "Path" in annotation else int if "int" in annotation else float if "float" in annotation else str
    if "None" not in annotation:
        return base

    def optional(text: str) -> Any:
        return None if text.lower() == _NONE else base(text)

    optional.__name__ = base.__name__
    return optional


def add_config_options(parser: argparse.ArgumentParser, config_type: type, prefix: str = "") -> None:
    """One option per config field; optional fields take 'none' to unset (e.g. --reports-dir none)."""
    group = parser.add_argument_group(f"{prefix}options" if prefix else "options")
    for field in dataclasses.fields(config_type):
        option = f"--{prefix}{field.name.replace('_', '-')}"
        group.add_argument(
            option,
            dest=f"{prefix}{field.name}".replace("-", "_"),
            type=_converter(str(field.type)),
            default=field.default,
            help=f"default: {field.default}" + (" ('none' to unset)" if "None" in str(field.type) else ""),
        )


def config_from_args(args: argparse.Namespace, config_type: type[Config], prefix: str = "") -> Config:
    values = {
        field.name: getattr(args, f"{prefix}{field.name}".replace("-", "_"))
        for field in dataclasses.fields(config_type)
    }  # type: ignore[arg-type]
    return config_type(**values)


def run_one(
    description: str, config_type: type[Config], train: Callable[[Config], Any], argv: list[str] | None
) -> None:
    """CLI body of a single-model entry point: options from the config, train, print the new tag."""
    parser = argparse.ArgumentParser(description=description)
    add_config_options(parser, config_type)
    print(train(config_from_args(parser.parse_args(argv), config_type)).model.tag)
