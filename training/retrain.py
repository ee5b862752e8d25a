"""Retrain a challenger from the committed data plus what analysts labelled (issue 21); it never activates anything.

python -m training.retrain --model attack                      # the attack classifier, feedback rows included
python -m training.retrain --model both --shadow 0.2           # both, each started in shadow on 20% of traffic
python -m training.retrain --model threat --extra-csv more.csv # plus an NSL-KDD-format CSV (labelled rows)
python -m training.retrain --on-drift --service-url http://127.0.0.1:3000 --drift-hold-seconds 3600
python -m training.retrain --model attack --upload http://nids-1:3000 --upload http://nids-2:3000 --shadow 0.2

The recipe is the one of `training.train_all` (same code, same defaults, the same `--threat-*` / `--attack-*`
options); the verdicts of `POST /api/v1/predictions/{id}/feedback` (read from the prediction log's database,
NIDS_PREDICTION_LOG_URL) and the rows of `--extra-csv` join the training split only, so the challenger is
evaluated on the same fixed held-out sets as every version before it (KDDTest+; the held-out rows of both
CIC-IDS2017 releases). The new version is registered inactive in the lifecycle state (NIDS_MODEL_STATE_URL) with
its lineage in the model's metadata: the parent (the active version), the sha256 of every input (committed files,
extra CSVs, the feedback rows) and the number of feedback rows. `--shadow SHARE` starts it in shadow; promoting
it stays a person's call (`POST /api/v1/models/shadow/promote`, through the gate).

`--upload URL` (repeatable) adds the new version to each service's own model store as a signed package
(`POST /api/v1/models/upload`, NIDS_ADMIN_TOKEN, NIDS_MODEL_SIGNING_KEY) before any shadow run starts: replicas
whose stores are not the one trained into (containers, pods) need it to score the shadow.

`--on-drift` watches `GET /api/v1/drift` every `--poll-seconds` and retrains the drifting model(s) once the status
`drift` has held for `--drift-hold-seconds`; it runs until stopped (`--max-retrains` bounds it).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from nids.core.database import open_database
from nids.core.features import (
    ATTACK_CLASSES,
    ATTACK_FEATURES,
    ATTACK_MODEL_NAME,
    THREAT_CATEGORICAL,
    THREAT_FEATURES,
    THREAT_MODEL_NAME,
)
from nids.core.settings import get_settings
from nids.models.artifacts import ModelLoadError, get_store_model
from nids.models.packages import write_package
from nids.models.shadow import ShadowStore
from nids.models.state import open_lifecycle_store
from nids.observability.feedback import FeedbackStore
from training import add_config_options, config_from_args
from training.attack import AttackConfig, train_attack
from training.common import ExtraRows
from training.data import LABEL, SOURCE, Dataset, load_cic_original, load_nsl_kdd
from training.threat import ThreatConfig, train_threat

THREAT, ATTACK = "threat-", "attack-"
MODEL_TYPES = {"threat": THREAT_MODEL_NAME, "attack": ATTACK_MODEL_NAME}
FEEDBACK_SOURCE = "feedback"  # the SOURCE of the attack classifier's feedback rows
ACTOR = "retrain"


def feedback_frame(
    kind: str, rows: Sequence[tuple[dict[str, Any], str]], encoders: dict[str, list[str]]
) -> pd.DataFrame:
    """The labelled flows as training rows: features (category codes sent as numbers back to their names) and LABEL."""
    if kind == "threat":
        records = []
        for features, label in rows:
            row = {name: features[name] for name in THREAT_FEATURES}
            for name in THREAT_CATEGORICAL:
                value = row[name]
                if isinstance(value, int) and 0 <= value < len(encoders.get(name, ())):
                    row[name] = encoders[name][value]
                row[name] = str(row[name])
            records.append({**row, LABEL: int(label == "attack")})
        return pd.DataFrame(records, columns=[*THREAT_FEATURES, LABEL])
    records = [
        {
            **{name: float(features[name]) for name in ATTACK_FEATURES},
            LABEL: ATTACK_CLASSES.index(label),
            SOURCE: FEEDBACK_SOURCE,
        }
        for features, label in rows
    ]
    return pd.DataFrame(records, columns=[*ATTACK_FEATURES, LABEL, SOURCE])


def rows_sha256(rows: Sequence[tuple[int, dict[str, Any], str]]) -> str:
    """The feedback rows' fingerprint: sha256 of their canonical JSON (prediction id, label, features)."""
    text = json.dumps([[pid, label, features] for pid, features, label in rows], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def extra_rows(kind: str, csvs: Sequence[Path]) -> list[Dataset]:
    """Labelled CSVs in the committed data's formats: NSL-KDD's columns (threat), CICFlowMeter's (attack)."""
    if kind == "threat":
        return [load_nsl_kdd(path) for path in csvs]
    return [load_cic_original(path) for path in csvs]


def parent_tag(model_type: str) -> str:
    """The active version (lifecycle state) the challenger is meant to replace; the store's latest otherwise."""
    settings = get_settings()
    store = open_lifecycle_store(settings.state_url, settings.model_state_table_prefix)
    try:
        state = store.active().get(model_type)
    finally:
        store.close()
    return state.tag if state is not None else str(get_store_model(f"{model_type}:latest").tag)


def retrain(
    kind: str,
    config: ThreatConfig | AttackConfig,
    *,
    csvs: Sequence[Path] = (),
    shadow: float | None = None,
    trigger: str = "manual",
    uploads: Sequence[str] = (),
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
) -> str:
    """Train one challenger, register it inactive with its lineage (uploaded to `uploads`, the services whose
    stores need it; then started in shadow when asked); its tag."""
    settings = get_settings()
    model_type = MODEL_TYPES[kind]
    parent = parent_tag(model_type)
    try:  # the parent's categories turn codes sent as numbers back into names; a job with a store of its own
        encoders = dict(get_store_model(parent).info.metadata.get("encoders", {}))  # may not hold the parent
    except ModelLoadError:
        encoders = {}
    feedback = FeedbackStore(open_database(settings.prediction_log_database_url), settings.prediction_log_table_prefix)
    try:
        labelled = [(given.prediction_id, features, label) for features, label, given in feedback.labelled(kind)]
    finally:
        feedback.db.close()
    datasets = extra_rows(kind, csvs)
    frames = [feedback_frame(kind, [(features, label) for _, features, label in labelled], encoders)]
    frames += [dataset.frame for dataset in datasets]
    lineage = {
        "parent": parent,
        "trigger": trigger,
        "retrained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "feedback_rows": len(labelled),
        "feedback_sha256": rows_sha256(labelled),
        "feedback_prediction_ids": [pid for pid, _, _ in labelled],
        "extra_csv": [dataset.describe() for dataset in datasets],
        "committed_data": "metadata input_files (the same files and hashes as the parent's recipe)",
    }
    log(f"{model_type}: retraining from {parent} with {len(labelled)} feedback rows, {len(datasets)} extra CSVs")
    extra = ExtraRows(
        pd.concat([f for f in frames if len(f)], ignore_index=True) if any(map(len, frames)) else frames[0], lineage
    )
    train: Callable[..., Any] = train_threat if kind == "threat" else train_attack
    tag = train(config, extra).model.tag
    description = f"challenger of {parent}: {len(labelled)} feedback rows ({trigger})"
    upload(tag, model_type, uploads, description)
    state = open_lifecycle_store(settings.state_url, settings.model_state_table_prefix)
    try:
        state.note(tag, description=description, uploaded_by=ACTOR)
        detail = {key: lineage[key] for key in ("parent", "trigger", "feedback_rows", "feedback_sha256")}
        state.record(ACTOR, "register", model_type=model_type, to_tag=tag, reason=description, detail=detail)
        if shadow is not None:
            ShadowStore(state.db, settings.model_state_table_prefix).start(model_type, tag, shadow, ACTOR)
            state.record(ACTOR, "shadow_start", model_type=model_type, to_tag=tag, detail={"share": shadow})
    finally:
        state.close()
    log(f"{model_type}: registered {tag} inactive" + (f", in shadow on {shadow:.0%} of flows" if shadow else ""))
    return tag


def upload(tag: str, model_type: str, services: Sequence[str], description: str) -> None:
    """The version as a signed package (NIDS_MODEL_SIGNING_KEY) to each service's store, through
    `POST /api/v1/models/upload` with NIDS_ADMIN_TOKEN: how replicas with stores of their own get the challenger."""
    settings = get_settings()
    key = settings.model_signing_key.get_secret_value().encode() if settings.model_signing_key else None
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    package = io.BytesIO()
    write_package(get_store_model(tag), package, key)
    for service in services:
        response = httpx.post(
            f"{service.rstrip('/')}/api/v1/models/upload",
            files={"file": ("challenger.bentomodel", package.getvalue())},
            data={"model_type": model_type, "description": description},
            headers={"authorization": f"Bearer {token}"},
            timeout=300,
        )
        if response.status_code != 201:
            raise RuntimeError(f"upload of {tag} to {service} refused: {response.status_code} {response.text[:500]}")


def drifting(service_url: str) -> set[str]:
    """The kinds ('threat', 'attack') whose drift status is `drift` now."""
    report = httpx.get(f"{service_url.rstrip('/')}/api/v1/drift", timeout=30).raise_for_status().json()
    return {model["role"] for model in report["models"] if model["status"] == "drift"}


def watch(args: argparse.Namespace, configs: dict[str, ThreatConfig | AttackConfig]) -> list[str]:
    """Retrain each model whose drift alert held for --drift-hold-seconds; the tags registered."""
    since: dict[str, float] = {}
    tags: list[str] = []
    while args.max_retrains is None or len(tags) < args.max_retrains:
        now = time.monotonic()
        try:
            current = drifting(args.service_url) & set(configs)
        except httpx.HTTPError as error:  # the service restarts: keep what held, ask again
            print(f"drift not read: {error}", file=sys.stderr, flush=True)
            current = set(since)
        since = {kind: since.get(kind, now) for kind in current}
        for kind, start in list(since.items()):
            if now - start >= args.drift_hold_seconds:
                trigger = f"drift held {now - start:.0f} s (>= {args.drift_hold_seconds:g} s)"
                tags.append(
                    retrain(
                        kind,
                        configs[kind],
                        csvs=args.extra_csv,
                        shadow=args.shadow,
                        trigger=trigger,
                        uploads=args.upload,
                    )
                )
                del since[kind]  # the next retrain needs the alert to hold again
        if args.max_retrains is not None and len(tags) >= args.max_retrains:
            break
        time.sleep(args.poll_seconds)  # a polling interval, not synchronisation
    return tags


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["threat", "attack", "both"], default="both")
    parser.add_argument("--extra-csv", type=Path, action="append", default=[], help="labelled CSV rows to add")
    parser.add_argument("--shadow", type=float, default=None, help="start each challenger in shadow on this share")
    parser.add_argument(
        "--upload",
        action="append",
        default=[],
        metavar="URL",
        help="also add it to this service's store (each replica)",
    )
    parser.add_argument("--on-drift", action="store_true", help="retrain when a drift alert held long enough")
    parser.add_argument("--service-url", default="http://127.0.0.1:3000", help="the service whose drift is read")
    parser.add_argument("--drift-hold-seconds", type=float, default=3600.0)
    parser.add_argument("--poll-seconds", type=float, default=60.0)
    parser.add_argument("--max-retrains", type=int, default=None, help="stop watching after this many")
    add_config_options(parser, ThreatConfig, THREAT)
    add_config_options(parser, AttackConfig, ATTACK)
    args = parser.parse_args(argv)
    if args.shadow is not None and not 0 < args.shadow <= 1:
        parser.error("--shadow must be a share in (0, 1]")
    if args.extra_csv and args.model == "both":
        parser.error("--extra-csv needs --model threat (NSL-KDD columns) or --model attack (CICFlowMeter columns)")
    kinds = ["threat", "attack"] if args.model == "both" else [args.model]
    configs: dict[str, ThreatConfig | AttackConfig] = {}
    if "threat" in kinds:
        configs["threat"] = config_from_args(args, ThreatConfig, THREAT)
    if "attack" in kinds:
        configs["attack"] = config_from_args(args, AttackConfig, ATTACK)
    if args.on_drift:
        tags = watch(args, configs)
    else:
        tags = [
            retrain(kind, config, csvs=args.extra_csv, shadow=args.shadow, uploads=args.upload)
            for kind, config in configs.items()
        ]
    for tag in tags:
        print(tag, flush=True)


if __name__ == "__main__":
    main()
