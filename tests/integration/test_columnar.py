"""Arrow and Parquet bodies on the batched APIs of a real server: the same answers as JSON on the held-out pools,
refusals naming column and rule, 415 where an API reads JSON only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pytest

from nids.core.tables import ARROW_FILE, ARROW_STREAM, PARQUET
from tests.core.test_tables import encode, pool

from .conftest import Server

pytestmark = [pytest.mark.integration]
PATHS = {"threat": "/detect_threat", "attack": "/classify_attack"}


@pytest.fixture(scope="module")
def server(model_store: Any, serve: Callable[..., Server]) -> Server:
    return serve(model_store.home)


def answers(http: httpx.Client, path: str, body: bytes, media_type: str) -> list[dict[str, Any]]:
    response = http.post(path, content=body, headers={"content-type": media_type})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("kind", ["threat", "attack"])
def test_arrow_answers_equal_json_on_the_pool(http: httpx.Client, kind: str) -> None:
    rows = pool(kind)
    for start in range(0, len(rows), 500):
        chunk = [{**row, "flow_id": f"{kind}-{start + i}"} for i, row in enumerate(rows[start : start + 500])]
        expected = answers(http, PATHS[kind], orjson.dumps({"flows": chunk}), "application/json")
        table = pa.Table.from_pylist(chunk)
        for media_type in (ARROW_STREAM, ARROW_FILE, PARQUET):
            assert answers(http, PATHS[kind], encode(table, media_type), media_type) == expected


def test_explained_twin_reads_arrow(http: httpx.Client) -> None:
    rows = pool("threat")[:5]
    body = encode(pa.Table.from_pylist(rows))
    got = answers(http, "/detect_threat?explain=2", body, ARROW_STREAM)
    assert [len(item["explanation"]["top_features"]) for item in got] == [2] * 5


def test_refusals_name_the_column(http: httpx.Client) -> None:
    table = pa.Table.from_pylist(pool("attack")[:50]).drop_columns([" Flow Duration"])
    response = http.post(PATHS["attack"], content=encode(table), headers={"content-type": ARROW_STREAM})
    assert response.status_code == 400
    assert response.json()["detail"] == [
        {"loc": ["flows", " Flow Duration"], "msg": "Field required: the table has no column for this feature",
         "type": "missing"}
    ]  # fmt: skip
    rows = pool("threat")[:20]
    rows[4] = {**rows[4], "same_srv_rate": float("nan")}
    body = encode(pa.Table.from_pylist(rows), PARQUET)
    response = http.post(PATHS["threat"], content=body, headers={"content-type": PARQUET})
    assert response.status_code == 400
    assert [item["loc"] for item in response.json()["detail"]] == [["flows", 4, "same_srv_rate"]]
    response = http.post(PATHS["threat"], content=b"not arrow", headers={"content-type": ARROW_STREAM})
    assert response.status_code == 400
    assert response.json()["detail"][0]["type"] == "columnar_invalid"


def test_apis_of_json_objects_answer_415(http: httpx.Client) -> None:
    body = encode(pa.Table.from_pylist(pool("threat")[:5]))
    for path in ("/analyze", "/self_heal", "/model_info"):
        response = http.post(path, content=body, headers={"content-type": ARROW_STREAM})
        assert response.status_code == 415, (path, response.text)
        assert "/detect_threat" in response.json()["error"]
