"""The attack-type -> action policy: a YAML file validated at startup.

Any problem (unknown attack type, unknown action, bad parameter, a class covered twice or not at all) raises
PolicyError naming the file, the line and the rule that failed, so the service refuses to start.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from nids.core.actions import ACTION_TYPES, ActionType, attack_class
from nids.core.features import ATTACK_CLASSES

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Location = tuple[int | str, ...]
ALWAYS_ALLOWED: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
SERVICE_NAME = r"^[A-Za-z0-9@._-]+$"


class PolicyError(ValueError):
    """The policy file is invalid; the message names the line, the key and the rule."""


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4/IPv6 address or network (CIDR)") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestartParams(_Strict):
    service: str = Field(pattern=SERVICE_NAME, description="default service to restart (one of services)")


class BlockParams(_Strict):
    block_seconds: int | None = Field(None, gt=0, description="overrides block.seconds for this rule")


class AlertParams(_Strict):
    severity: Literal["info", "low", "medium", "high", "critical"] = "medium"


class NoParams(_Strict):
    pass


class _Rule(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    attacks: list[Annotated[str, AfterValidator(attack_class)]] = Field(min_length=1)


class RestartRule(_Rule):
    action: Literal["restart_service"]
    params: RestartParams


class BlockRule(_Rule):
    action: Literal["block_ip"]
    params: BlockParams = BlockParams()


class AlertRule(_Rule):
    action: Literal["alert_admin"]
    params: AlertParams = AlertParams()


class LogRule(_Rule):
    action: Literal["log_only"]
    params: NoParams = NoParams()


Rule = Annotated[RestartRule | BlockRule | AlertRule | LogRule, Field(discriminator="action")]


class BlockSettings(_Strict):
    seconds: int = Field(3600, gt=0, description="a block is lifted this long after the source's last attack")
    table: str = Field("nids_bento", pattern=r"^[A-Za-z0-9_]+$", description="nftables table of our own")
    chain: str = Field("input", pattern=r"^[A-Za-z0-9_]+$")
    priority: int = Field(-10, description="nftables hook priority of our chain (input hook)")


class RateLimit(_Strict):
    max_actions: int = Field(gt=0)
    per_seconds: float = Field(gt=0)


class WebhookSettings(_Strict):
    url: str | None = Field(None, pattern=r"^https?://", description="alert_admin POSTs JSON here")
    timeout_seconds: float = Field(3.0, gt=0)
    retries: int = Field(3, ge=0, description="attempts after the first one")
    backoff_seconds: float = Field(0.5, ge=0, description="wait before retry n is backoff * 2**(n-1)")


class Policy(_Strict):
    """The whole policy file."""

    version: Literal[1] = 1
    min_confidence: float = Field(0.8, ge=0.0, le=1.0, description="below it, disruptive actions degrade")
    enforce: list[ActionType] = Field(default_factory=list, description="action types that really run")
    services: list[Annotated[str, Field(pattern=SERVICE_NAME)]] = Field(
        default_factory=lambda: ["apache2", "nginx"], description="the only services restart_service touches"
    )
    allowlist: list[Annotated[str, AfterValidator(_network)]] = Field(default_factory=list)
    block: BlockSettings = BlockSettings()
    rate_limits: dict[ActionType, RateLimit] = Field(default_factory=dict)
    webhook: WebhookSettings = WebhookSettings()
    queue_size: int = Field(10_000, gt=0, description="pending executions per action type")
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        for index, rule in enumerate(self.rules):
            if isinstance(rule, RestartRule) and rule.params.service not in self.services:
                raise _located(
                    ("rules", index, "params", "service"),
                    f"service {rule.params.service!r} is not in services {self.services}",
                )
        if "alert_admin" in self.enforce and self.webhook.url is None:
            raise _located(("enforce",), "alert_admin is enforced but webhook.url is not set")
        return self

    def rule_for(self, attack_type: str) -> Rule:
        return self._by_attack[attack_type]

    @cached_property
    def _by_attack(self) -> dict[str, Rule]:
        return {attack: rule for rule in self.rules for attack in rule.attacks}

    def networks(self, extra: Sequence[str] = ()) -> tuple[Network, ...]:
        """Networks never blocked: loopback, the configured allowlist and `extra` (the service's own addresses)."""
        return tuple(ipaddress.ip_network(net, strict=False) for net in (*ALWAYS_ALLOWED, *self.allowlist, *extra))


class _LocatedError(ValueError):
    def __init__(self, location: Location, message: str) -> None:
        super().__init__(message)
        self.location = location


def _located(location: Location, message: str) -> _LocatedError:
    return _LocatedError(location, message)


def _lines(node: yaml.Node, path: Location = ()) -> dict[Location, int]:
    """Line number (1-based) of every key path in a composed YAML document."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines |= _lines(value, (*path, key.value))
            lines[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines |= _lines(item, (*path, index))
    return lines


def _resolve(location: Location, lines: dict[Location, int]) -> tuple[Location, int]:
    """Key path as written in the file and its line.

    Parts that are not keys of the file (pydantic's union tags) are dropped; parts after the deepest existing
    key are kept (a missing required key), and the line is that of the deepest existing key.
    """
    found: Location = ()
    missing: list[int | str] = []
    for part in location:
        if (*found, part) in lines:
            found, missing = (*found, part), []
        elif part not in ACTION_TYPES:
            missing.append(part)
    return (*found, *missing), lines.get(found, 1)


def _problem(source: str, location: Location, message: str, lines: dict[Location, int]) -> str:
    path, line = _resolve(location, lines)
    return f"{source}:{line}: {'.'.join(map(str, path)) or '(top level)'}: {message}"


def _coverage_errors(policy: Policy) -> list[tuple[Location, str]]:
    errors: list[tuple[Location, str]] = []
    first: dict[str, str] = {}
    for index, rule in enumerate(policy.rules):
        for position, attack in enumerate(rule.attacks):
            if attack in first:
                message = f"attack type {attack!r} is already mapped by rule {first[attack]!r}"
                errors.append((("rules", index, "attacks", position), message))
            first.setdefault(attack, rule.name)
    names = [rule.name for rule in policy.rules]
    errors += [
        (("rules", index, "name"), f"rule name {name!r} is used twice")
        for index, name in enumerate(names)
        if name in names[:index]
    ]
    missing = [name for name in ATTACK_CLASSES if name not in first]
    if missing:
        errors.append((("rules",), f"no rule maps these attack types: {missing}"))
    return errors


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Validate policy YAML text; PolicyError lists every problem as `source:line: key: rule`."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise PolicyError(f"{source}:{line}: not valid YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict) or node is None:
        raise PolicyError(f"{source}:1: the policy must be a YAML mapping with at least 'rules'")
    lines = _lines(node)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            cause = item.get("ctx", {}).get("error")
            location = cause.location if isinstance(cause, _LocatedError) else item["loc"]
            message = str(cause) if isinstance(cause, _LocatedError) else item["msg"]
            problems.append(_problem(source, location, message, lines))
        raise PolicyError("invalid self-healing policy:\n" + "\n".join(problems)) from None
    problems = [_problem(source, location, message, lines) for location, message in _coverage_errors(policy)]
    if problems:
        raise PolicyError("invalid self-healing policy:\n" + "\n".join(problems))
    return policy


def load_policy(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyError(f"{path}: cannot read the self-healing policy file: {error.strerror}") from None
    return parse_policy(text, str(path))
