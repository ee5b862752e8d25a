"""Let circus restart a dead worker inside a container too.

BentoML 1.4.39 creates its watchers with `respawn=not running_inside_container()` (BENTOML_CONTAINERIZED, set by
every image it builds), leaving restarts to the orchestrator. But the orchestrator sees a live container: the
arbiter exits only once every worker is gone, so a worker killed for memory stays dead, its capacity lost while
/readyz answers 200. Here the check answers "not in a container" to `create_watcher`, its only caller (checked in
its source), and circus replaces a dead worker at its next check (every 10 s). Called where the service module is
imported, which `bentoml serve` does before it creates the watchers.

Upstream: no issue filed (searched bentoml/BentoML's issues for the respawn flag). Fallback: dead workers are not
restarted in a container; the replica answers /readyz 503 while one is missing (nids.serving.workers), so the
balancer drains it.
"""

from __future__ import annotations

import bentoml.serving

from nids.serving.compat import applies

UPSTREAM = (bentoml.serving.create_watcher, "23547d33154e9bb3703421eaafd278b201b3c4f24fee5b7a6796296313cfa236")
RESPAWN_FLAG = "respawn=not running_inside_container()"  # its one use in BentoML 1.4.39 (bentoml/serving.py)


def restart_dead_workers() -> bool:
    """True when dead workers are restarted (BentoML's own default outside a container, or the patch in place)."""
    if bentoml.serving.running_inside_container is _never_in_a_container:
        return True
    if not bentoml.serving.running_inside_container():
        return True
    fallback = "dead workers are not restarted in this container; /readyz answers 503 while one is missing"
    if not applies("restarting dead workers", fallback, UPSTREAM):
        return False
    bentoml.serving.running_inside_container = _never_in_a_container  # type: ignore[assignment]
    return True


def _never_in_a_container() -> bool:
    return False
