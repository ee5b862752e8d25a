"""Model lifecycle without a server: `python -m nids.models.cli export|sign|verify|import|import-bundle|sign-bundle|
activate|deactivate|list`.

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
from nids.models.bundles import BundleRefused, file_signature, import_file, parse_profile
from nids.models.lifecycle import Lifecycle
from nids.models.packages import SigningNotConfigured, import_package, sign_package, verify_package, write_package
from nids.models.registry import ModelRegistry
from nids.models.state import open_lifecycle_store


def _signature(args: argparse.Namespace) -> str | None:
    """--signature as hex or as a file holding it; else FILE.sig beside the file; else none (refused)."""
    given = args.signature
    path = Path(given) if given else args.file.with_name(args.file.name + ".sig")
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace")
    return given


def _lifecycle(settings: Settings) -> Lifecycle:
    store = open_lifecycle_store(settings.state_url, settings.model_state_table_prefix, settings.state_setting)
    return Lifecycle(
        store,
        ModelRegistry(),
        load_model,
        gate_margin=settings.model_gate_margin,
        signing_key=settings.signing_key,
        max_package_bytes=settings.model_max_package_bytes,
        member=(f"cli:{getpass.getuser()}", 0),
    )


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
    bundle = commands.add_parser(
        "import-bundle", help="validate a signed .joblib/.pkl bundle or ZIP deployment package of the original system"
    )
    bundle.add_argument("file", type=Path)
    bundle.add_argument("--profile", type=Path, help="the original's profile JSON (e.g. threat_detector_profile.json)")
    bundle.add_argument("--model-type", choices=["threat_detector", "attack_classifier"], help="else the profile's")
    bundle.add_argument("--signature", help="HMAC-SHA256 hex of the file, or a file holding it (default: FILE.sig)")
    bundle.add_argument("--description", default="")
    signer = commands.add_parser("sign-bundle", help="write FILE.sig: the HMAC-SHA256 of a bundle's or ZIP's bytes")
    signer.add_argument("file", type=Path)
    activate = commands.add_parser("activate", help="verify a version, pass the gate, make it active everywhere")
    activate.add_argument("tag", help="the store tag or the integer id")
    activate.add_argument("--force", action="store_true", help="pass the metric gate (needs --reason)")
    activate.add_argument("--reason")
    deactivate = commands.add_parser("deactivate", help="roll a type back to its previously active version")
    deactivate.add_argument("tag", help="the store tag or the integer id")
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
        key = None if args.unsigned else settings.signing_key
        with args.out.open("wb") as out:
            write_package(bentoml.models.get(args.tag), out, key)
        return {"exported": args.tag, "path": str(args.out), "signed": key is not None}
    if args.command == "sign":
        key = settings.signing_key
        if key is None:
            raise SigningNotConfigured("signing a model package")
        return {"signed": sign_package(args.package, args.out, key, limit), "path": str(args.out)}
    if args.command == "sign-bundle":
        key = settings.signing_key
        if key is None:
            raise SigningNotConfigured("signing a model bundle")
        out = args.file.with_name(args.file.name + ".sig")
        out.write_text(file_signature(args.file, key) + "\n")
        return {"signed": str(args.file), "signature_file": str(out)}
    if args.command == "verify":
        verified = verify_package(args.package, settings.signing_key, limit)
        return {"verified": verified.tag, "files": [entry.as_dict() for entry in verified.files]}
    lifecycle = _lifecycle(settings)
    try:
        if args.command == "import":
            tag = import_package(args.package, settings.signing_key, limit, expected_name=args.model_type)
            # the signed bytes, stored once where every replica sharing the state fetches them
            return lifecycle.registered(tag, actor, args.description, args.package.read_bytes()).model_dump(mode="json")
        if args.command == "import-bundle":
            profile = parse_profile(args.profile.read_bytes() if args.profile else None)
            model_type = args.model_type or profile.get("model_type")
            if model_type not in ("threat_detector", "attack_classifier"):
                raise BundleRefused("give --model-type threat_detector|attack_classifier, or model_type in the profile")
            imported = import_file(
                args.file, args.file.name, model_type, _signature(args), settings.signing_key, limit, profile
            )
            return lifecycle.registered(imported.tag, actor, args.description).model_dump(mode="json")
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
