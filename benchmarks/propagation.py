"""Activation propagation across a fleet: `python -m benchmarks.propagation --urls URL,URL,... --version TAG`.

Against replicas already running and sharing one lifecycle database (docs/deploy.md, "A fleet"), each round
activates `--version` through one replica (in turn) and then rolls it back through the next, and measures, for
every replica, the time from the moment the activation (or rollback) was answered until that replica's
`/detect_threat` answers with the new version (polled back to back, one connection per call). A replica whose
store lacks the version fetches and verifies its package in that time. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import httpx

BODY = json.loads((Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "detect_threat.json").read_text())
DEADLINE_SECONDS = 60.0


def served(url: str) -> str | None:
    response = httpx.post(f"{url}/detect_threat", json=BODY, timeout=10)
    return response.json()[0]["model_version"] if response.status_code == 200 else None


def switch(urls: list[str], through: str, path: str, token: str, version: str) -> list[float]:
    """Seconds from the answer to `path` until each replica serves `version`."""
    answer = httpx.post(f"{through}{path}", headers={"authorization": f"Bearer {token}"}, timeout=120)
    answered = time.monotonic()
    answer.raise_for_status()
    seconds = {}
    while len(seconds) < len(urls) and time.monotonic() - answered < DEADLINE_SECONDS:
        for url in urls:
            if url not in seconds and served(url) == version:
                seconds[url] = time.monotonic() - answered
    if len(seconds) < len(urls):
        raise SystemExit(f"not every replica served {version} within {DEADLINE_SECONDS} s: {seconds}")
    return [seconds[url] for url in urls]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", required=True, help="comma-separated replica URLs")
    parser.add_argument("--version", required=True, help="an inactive version (tag) to activate and roll back")
    parser.add_argument("--token", required=True, help="an admin token")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    urls = args.urls.split(",")
    active = served(urls[0])
    if active is None:
        raise SystemExit(f"{urls[0]} does not serve")
    rows = []
    for round_ in range(args.rounds):
        through = urls[round_ % len(urls)]
        back = urls[(round_ + 1) % len(urls)]
        models = "/api/v1/models"
        rows.append(("activate", switch(urls, through, f"{models}/{args.version}/activate", args.token, args.version)))
        rows.append(("roll back", switch(urls, back, f"{models}/{args.version}/deactivate", args.token, active)))
    print(f"| step | replicas | slowest replica, s (median / max over {args.rounds} rounds) | all replicas, median s |")
    print("|---|---|---|---|")
    first = rows[0][1]
    median = statistics.median(first)
    print(f"| first activation (fetch and verify included) | {len(urls)} | {max(first):.2f} | {median:.2f} |")
    for step in ("activate", "roll back"):
        times = [seconds for name, seconds in rows if name == step]
        slowest = [max(each) for each in times]
        every = [value for each in times for value in each]
        print(
            f"| {step} | {len(urls)} | {statistics.median(slowest):.2f} / {max(slowest):.2f} | "
            f"{statistics.median(every):.2f} |"
        )


if __name__ == "__main__":
    main()
