"""Columnar request bodies (Arrow IPC, Parquet) for the batched APIs, read by BentoML 1.4.39 (issue 23).

BentoML picks the serde of a request by its Content-Type from `_bentoml_impl.serde.ALL_SERDE`, and falls back to
JSON for any type it does not list. `compat.serde.install_columnar()` lists the media types of
nids.core.tables.FORMATS, served by `ColumnarSerde`: the body is handed, unread, to the API's flow field (a
`Columns` field: detect_threat, classify_attack and their explained twins), which reads and validates it as a
table into the same FlowBatch a JSON body becomes (nids.core.tables). Any other API answers 415 naming the ones
that take a table. Answers stay JSON: the response does not go through the serde (the batched APIs' scores render
their own JSON bytes).

The registration is a private BentoML API: nids.serving.compat.serde.install_columnar, which applies to the pinned
version only; on any other, columnar bodies are not registered (they would be read as JSON and refused with 400)
and a warning says so.
"""

from __future__ import annotations

from typing import Any

from _bentoml_impl.serde import JSONSerde
from starlette.requests import Request

from nids.core.columns import Columns
from nids.core.errors import UnsupportedMediaType
from nids.core.tables import ColumnarBody


def columns_field(cls: Any) -> str | None:
    """The input model's field of flows read as columns (a `Columns` annotation), None when it has none."""
    for name, info in cls.model_fields.items():
        if any(isinstance(item, Columns) for item in info.metadata):
            return name
    return None


class ColumnarSerde(JSONSerde):
    """Columnar bodies for the batched APIs; JSON (as BentoML's JSON serde) for everything it serialises."""

    async def parse_request(self, request: Request, cls: Any) -> Any:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        field = columns_field(cls)
        if field is None:
            raise UnsupportedMediaType(
                f"{request.url.path} reads JSON; {media_type} bodies are read by /detect_threat and /classify_attack"
            )
        return cls.model_validate({field: ColumnarBody(await request.body(), media_type)})
