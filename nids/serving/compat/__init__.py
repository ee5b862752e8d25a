"""Every patch of a BentoML, uvicorn, starlette or asyncio internal, and every private API this service relies on,
in one place (issue 23). One module per workaround; each names the upstream issue or behaviour it works around,
and applies only where `applies()` says so: bentoml is the pinned version AND the upstream code it replaces or
relies on has exactly the source it was written against (sha256 of `inspect.getsource`). Anything else: the
feature falls back (said per module: BentoML's own behaviour, or the service refuses to start where running
without the guard would be unsafe) and a warning names what differs.

- `timeout`: TimeoutMiddleware never cancels its per-request timer (GC stalls, p99 spikes); no issue filed
  (related: bentoml/BentoML#5642).
- `respawn`: workers are never restarted inside a container; no issue filed.
- `endpoint`: 5xx messages replaced, client errors logged at ERROR with a traceback; bentoml/BentoML#3652.
- `serde`: duplicate JSON keys kept silently, file fields fetched from URLs (bentoml/BentoML#4411), the columnar
  media types registered.
- `batching`: adaptive batching merges lists only; bentoml/BentoML#3805, its registry shown by #3873.
- `accept`: one worker takes every waiting connection; bentoml/BentoML#5426 (its SO_REUSEPORT PR #5557, closed).
- `listen`: the bind address is only in the worker's `--fd` argument; no public API.

tests/serving/compat/ has, per module, a test that fails when the upstream behaviour changes (so the patch can
be dropped) besides the tests of the patch itself.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from typing import Any

import bentoml

logger = logging.getLogger("nids.compat")
PATCHED_VERSION = "1.4.39"


def source_digest(obj: Any) -> str:
    """sha256 of the source of a function or class; '' when it has none to read."""
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
    except (OSError, TypeError):
        return ""


def applies(feature: str, fallback: str, *originals: tuple[Any, str]) -> bool:
    """True on the pinned bentoml with every (upstream object, sha256 of its source) unchanged; else logs `feature`
    is not applied, why, and `fallback` (what the service does instead), and returns False."""
    if bentoml.__version__ != PATCHED_VERSION:
        why = f"bentoml {bentoml.__version__} is not {PATCHED_VERSION}"
    else:
        changed = [getattr(obj, "__qualname__", repr(obj)) for obj, digest in originals if source_digest(obj) != digest]
        if not changed:
            return True
        why = f"the upstream source of {', '.join(changed)} is not the one the patch was written against"
    logger.warning("%s not applied (%s): %s", feature, why, fallback)
    return False
