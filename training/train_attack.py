"""Train the attack classifier (CIC-IDS2017) into the BentoML store: python -m training.train_attack --help"""

from __future__ import annotations

from training import run_one
from training.attack import AttackConfig, train_attack


def main(argv: list[str] | None = None) -> None:
    run_one(__doc__, AttackConfig, train_attack, argv)


if __name__ == "__main__":
    main()
