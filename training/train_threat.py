"""Train the threat detector (NSL-KDD) into the BentoML store: python -m training.train_threat --help"""

from __future__ import annotations

from training import run_one
from training.threat import ThreatConfig, train_threat


def main(argv: list[str] | None = None) -> None:
    run_one(__doc__, ThreatConfig, train_threat, argv)


if __name__ == "__main__":
    main()
