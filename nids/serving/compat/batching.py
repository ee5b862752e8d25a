"""Adaptive batching of column batches: how BentoML merges FlowBatches and splits their scores (BentoML 1.4.39).

BentoML's dispatcher finds a container by the type of a batchable API's argument and result: a list is
extended and sliced, any other type counts as one item and cannot be merged. `install()` registers the types of
nids.core.columns (FlowBatch in, ThreatScores / AttackScores out) so several requests are still scored in one
model call: batches are concatenated, scores split back by slicing, and the batch size counts flows.

Upstream: the registry is BentoML's private API for custom batch types (bentoml/BentoML#3805, its use shown in the
docs by #3873); no public way exists. Fallback: not registered, and BentoML's default container would treat a
FlowBatch as one item: the service refuses to start (RuntimeError) rather than serve unmerged, unsplit batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bentoml._internal.runner.container import DataContainer, DataContainerRegistry

from nids.core.columns import AttackScores, FlowBatch, ThreatScores
from nids.serving.compat import applies

UPSTREAM = (
    (DataContainer, "611578602b6c7e5bf1d96cf7782417bf37f1089c364a1e95336314c9aa63c786"),
    (DataContainerRegistry, "7bdb03bd4a897b5b0d8fc4888d4a0e7ae92fe0c0e93626f72fefe1579f0b4627"),
)

Columns = FlowBatch | ThreatScores | AttackScores


class ColumnsContainer(DataContainer[Columns, Columns]):
    """Batch size = flows; merge = `concat` of the type (the dispatcher also splits a request past max_batch_size
    and merges its two scores); split = slices. Never crosses a process boundary."""

    @classmethod
    def batches_to_batch(cls, batches: Sequence[Any], batch_dim: int = 0) -> tuple[Any, list[int]]:
        if len(batches) == 1:  # a bulk request fills a batch alone: nothing to copy
            return batches[0], [0, len(batches[0])]
        indices = [0]
        for batch in batches:
            indices.append(indices[-1] + len(batch))
        return type(batches[0]).concat(batches), indices

    @classmethod
    def batch_to_batches(cls, batch: Any, indices: Sequence[int], batch_dim: int = 0) -> list[Any]:
        if len(indices) == 2 and indices[0] == 0 and indices[1] == len(batch):
            return [batch]
        return [batch[indices[i] : indices[i + 1]] for i in range(len(indices) - 1)]

    @classmethod
    def get_batch_size(cls, batch: Any, batch_dim: int) -> int:
        return len(batch)

    @classmethod
    def to_payload(cls, batch: Any, batch_dim: int) -> Any:
        raise NotImplementedError("column batches are scored in the process that validated them")

    @classmethod
    def from_payload(cls, payload: Any) -> Any:
        raise NotImplementedError("column batches are scored in the process that validated them")


def install() -> None:
    """Register the column batches' container; RuntimeError where the registry is not the one this was written for."""
    if not applies("merging column batches", "the service does not start", *UPSTREAM):
        raise RuntimeError("adaptive batching of column batches cannot be registered with this BentoML (see above)")
    for kind in (FlowBatch, ThreatScores, AttackScores):
        DataContainerRegistry.register_container(kind, kind, ColumnsContainer)
