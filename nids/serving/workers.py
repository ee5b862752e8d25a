"""Is every worker of this `bentoml serve` running? /readyz answers 503 while one is missing.

A worker killed by the kernel (out of memory) or by a signal leaves its replica with less capacity and, where
nothing restarts it, for good. The server restarts it (nids.serving.compat.respawn) at its
next check, within 10 s; until then, and for ever where that patch could not be applied, the replica reports
itself unready with the reason, so a balancer drains it instead of sending it more than it can take.

The workers of one server are the children of its process (circus' arbiter) started with the same command line
but for their `--worker-id`; the count is read from /proc on each call (a container holds a few processes).
"""

from __future__ import annotations

import os
from pathlib import Path

from bentoml import server_context

PROC = Path("/proc")
WORKER_ID = "--worker-id"
RESPAWN_SECONDS = 10  # circus' check interval in BentoML 1.4.39's arbiter: a dead worker is replaced by then


def _worker_command(args: list[str]) -> tuple[str, ...] | None:
    """A worker's command line without its worker id; None for any other process."""
    if WORKER_ID not in args:
        return None
    at = args.index(WORKER_ID)
    return (*args[:at], *args[at + 2 :])


def live_children(ppid: int) -> dict[int, list[str]]:
    """{PID: command line} of the processes whose parent is ppid, zombies (dead, not yet reaped) excepted."""
    found = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            state, parent = stat[stat.rindex(b")") + 2 :].split()[:2]
            if int(parent) == ppid and state not in (b"Z", b"X"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError):  # gone meanwhile
            continue
    return found


def worker_pids(ppid: int) -> dict[int, int]:
    """{worker id: PID} of the live workers of the `bentoml serve` whose PID is ppid."""
    return {
        int(args[args.index(WORKER_ID) + 1]): pid
        for pid, args in live_children(ppid).items()
        if _worker_command(args) is not None
    }


def running_workers() -> int | None:
    """How many workers of this server are running, this one included; None outside a worker or without /proc."""
    if server_context.worker_index is None or not PROC.is_dir():
        return None
    try:
        mine = _worker_command((PROC / "self" / "cmdline").read_bytes().decode(errors="replace").split("\0"))
    except OSError:
        return None
    if mine is None:
        return None
    return sum(1 for args in live_children(os.getppid()).values() if _worker_command(args) == mine)


def missing_workers(expected: int, restarted: bool) -> str | None:
    """The reason this replica is not at full strength, or None when all `expected` workers run. restarted:
    whether the server restarts a dead worker (else the replica stays unready until it is restarted)."""
    running = running_workers()
    if running is None or running >= expected:
        return None
    then = f"the server restarts it within {RESPAWN_SECONDS} s" if restarted else "restart the replica"
    return f"{running} of {expected} workers running (NIDS_WORKERS): a worker died (killed, out of memory?); {then}"
