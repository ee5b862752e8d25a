"""Model lifecycle without a server: `python -m nids.models.cli export|sign|verify|import|activate|deactivate|list`.

The same settings as the service (NIDS_MODEL_SIGNING_KEY, NIDS_MODEL_STATE_URL / NIDS_HEALING_AUDIT_URL,
NIDS_DATA_DIR, BENTOML_HOME), the same checks: import verifies the signature before anything is written to the
store, activate loads and verifies the version and passes the gate before it records the switch, which every
running worker and replica sharing the state then follows within NIDS_MODEL_SYNC_SECONDS. Exit status 0 on
success, 1 with the reason on stderr when refused.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import bentoml

from nids.core.errors import NIDSError
from nids.core.settings import Settings, get_settings
from nids.models.artifacts import load_model
from nids.models.lifecycle import Lifecycle
from nids.models.packages import SigningNotConfigured, import_package, sign_package, verify_package, write_package
from nids.models.registry import ModelRegistry
from nids.models.state import open_lifecycle_store


def _key(settings: Settings) -> bytes | None:
    return settings.model_signing_key.get_secret_value().encode() if settings.model_signing_key else None


def _lifecycle(settings: Settings) -> Lifecycle:
    store = open_lifecycle_store(settings.state_url, settings.model_state_table_prefix)
    return Lifecycle(store, ModelRegistry(), load_model, gate_margin=settings.model_gate_margin)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nids.models.cli", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a model's package (signed when a key is configured)")
    export.add_argument("tag")
    export.add_argument("out", type=Path)
    export.add_argument("--unsigned", action="store_true", help="do not sign, even with a key configured")
    sign = commands.add_parser("sign", help="sign an existing export (e.g. from `bentoml models export`)")
    sign.add_argument("package", type=Path)
    sign.add_argument("out", type=Path)
    verify = commands.add_parser("verify", help="check a package's members and signature (writes nothing)")
    verify.add_argument("package", type=Path)
    imported = commands.add_parser("import", help="verify a signed package and add its model to the store, inactive")
    imported.add_argument("package", type=Path)
    imported.add_argument("--model-type", choices=["threat_detector", "attack_classifier"])
    imported.add_argument("--description", default="")
    activate = commands.add_parser("activate", help="verify a version, pass the gate, make it active everywhere")
    activate.add_argument("tag")
    activate.add_argument("--force", action="store_true", help="pass the metric gate (needs --reason)")
    activate.add_argument("--reason")
    deactivate = commands.add_parser("deactivate", help="roll a type back to its previously active version")
    deactivate.add_argument("tag")
    deactivate.add_argument("--reason")
    listing = commands.add_parser("list", help="the versions in the store and which is active")
    listing.add_argument("--model-type", choices=["threat_detector", "attack_classifier"])
    return parser


def run(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = _parser().parse_args(argv)
    settings = get_settings()
    actor = f"cli:{getpass.getuser()}"
    limit = settings.model_max_package_bytes
    if args.command == "export":
        key = None if args.unsigned else _key(settings)
        with args.out.open("wb") as out:
            write_package(bentoml.models.get(args.tag), out, key)
        return {"exported": args.tag, "path": str(args.out), "signed": key is not None}
    if args.command == "sign":
        key = _key(settings)
        if key is None:
            raise SigningNotConfigured("signing a model package")
        return {"signed": sign_package(args.package, args.out, key, limit), "path": str(args.out)}
    if args.command == "verify":
        verified = verify_package(args.package, _key(settings), limit)
        return {"verified": verified.tag, "files": [entry.as_dict() for entry in verified.files]}
    lifecycle = _lifecycle(settings)
    try:
        if args.command == "import":
            tag = import_package(args.package, _key(settings), limit, expected_name=args.model_type)
            return lifecycle.registered(tag, actor, args.description).model_dump(mode="json")
        if args.command == "activate":
            entry = lifecycle.activate(args.tag, actor, force=args.force, reason=args.reason)
            return entry.model_dump(mode="json")
        if args.command == "deactivate":
            return lifecycle.deactivate(args.tag, actor, args.reason).model_dump(mode="json")
        return {
            "versions": [
                {
                    "id": e.id,
                    "tag": e.tag,
                    "is_active": e.is_active,
                    "gate_metric": e.gate_metric.model_dump(),
                    "retired": e.retired,
                }
                for e in lifecycle.list_versions(args.model_type)
            ]
        }
    finally:
        lifecycle.store.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        result = run(argv)
    except NIDSError as error:
        print(f"refused ({int(error.status_code)}): {error.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
