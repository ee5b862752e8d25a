"""The address this `bentoml serve` worker listens on, for the auth mode (nids.serving.auth: `open` only on
loopback).

BentoML 1.4.39 hands its workers the listening socket as `--fd N` (_bentoml_impl.worker.service); no public API
names the bind address in the worker. Upstream: no issue (the argument is internal). Fallback: None, which the
auth mode treats as a non-loopback address (`required`: tokens needed), never as loopback.
"""

from __future__ import annotations

import os
import socket
import sys

import _bentoml_impl.worker.service as worker

from nids.serving.compat import applies

UPSTREAM = (worker.main.callback, "19466ba1f7ca3faa6037f83785414ba55c3440351d22baa0772b011bc5da022a")
FD_ARGUMENT = "--fd"


def bound_address() -> str | None:
    """The worker's listening address from its `--fd` argument; None when it cannot be read (another BentoML, not a
    worker)."""
    argv = sys.argv
    if FD_ARGUMENT not in argv[:-1]:
        return None
    if not applies("reading the bind address", "treated as non-loopback (auth mode required)", UPSTREAM):
        return None
    try:
        listening = socket.socket(fileno=os.dup(int(argv[argv.index(FD_ARGUMENT) + 1])))
    except (OSError, ValueError):
        return None
    with listening:
        try:
            name = listening.getsockname()
        except OSError:
            return None
    return str(name[0]) if isinstance(name, tuple) else None
