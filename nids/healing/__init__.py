"""Self-healing: policy-driven, dry-run-by-default, reversible and audited remediation of detected attacks."""

from nids.core.actions import AttackEvent, HealingAction
from nids.healing.engine import ActionNotFound, HealingEngine, NotRevertible
from nids.healing.policy import Policy, PolicyError, load_policy
from nids.healing.schemas import ActionQuery, ActionRecord

__all__ = [
    "ActionNotFound",
    "ActionQuery",
    "ActionRecord",
    "AttackEvent",
    "HealingAction",
    "HealingEngine",
    "NotRevertible",
    "Policy",
    "PolicyError",
    "load_policy",
]
