"""Train both models into the BentoML store (BENTOML_HOME, default ~/bentoml).

python -m training.train_all                 # train both with the defaults (committed data under data/)
python -m training.train_all --if-missing    # only the models the store lacks (used by `make serve`)
python -m training.train_all --threat-train-path /data/KDDTrain+.csv.gz --attack-n-estimators 200
"""

from __future__ import annotations

import argparse
import sys
import time

from training import add_config_options, config_from_args
from training.attack import AttackConfig, train_attack
from training.threat import ThreatConfig, train_threat

THREAT, ATTACK = "threat-", "attack-"


def in_store(name: str) -> bool:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(f"{name}:latest")
    except NotFound:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--if-missing", action="store_true", help="skip models the store already holds")
    add_config_options(parser, ThreatConfig, THREAT)
    add_config_options(parser, AttackConfig, ATTACK)
    args = parser.parse_args(argv)
    jobs = (
        (config_from_args(args, ThreatConfig, THREAT), train_threat),
        (config_from_args(args, AttackConfig, ATTACK), train_attack),
    )
    start = time.monotonic()
    for config, train in jobs:
        if args.if_missing and in_store(config.model_name):
            print(f"{config.model_name}: already in the store, not retrained (--if-missing)", file=sys.stderr)
            continue
        print(f"{config.model_name}: training", file=sys.stderr, flush=True)
        print(train(config).model.tag, flush=True)
    print(f"done in {time.monotonic() - start:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
