"""Bad input never reaches a 500: hand-found cases (the property-based fuzzing of the spec: test_fuzz.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Server

pytestmark = [pytest.mark.integration]
ADMIN_TOKEN = "hardening-test-admin-token"

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
THREAT_MESSAGE: dict[str, Any] = json.loads((FIXTURES / "original_threat_message.json").read_text())
POST_APIS = [
    "detect_threat",
    "classify_attack",
    "self_heal",
    "analyze",
    "analyze_csv",
    "ping",
    "model_info",
    "healing_actions",
    "healing_action",
    "healing_revert",
    "healing_enforcement",
]


@pytest.fixture(scope="module")
def server(model_store: Any, serve: Callable[..., Server]) -> Server:
    return serve(model_store.home, NIDS_ADMIN_TOKEN=ADMIN_TOKEN)


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    """An admin caller: the admin APIs get past the token check, to the body they are sent."""
    with server.client() as client:
        client.headers["authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield client


@pytest.fixture
def bait() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that records every request it gets: the service must never fetch it."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"src_bytes\n1\n")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/flows.csv", seen
    httpd.shutdown()
    thread.join()


@pytest.mark.parametrize("api", POST_APIS)
def test_multipart_without_a_boundary_is_a_400(http: httpx.Client, api: str) -> None:
    response = http.post(f"/{api}", content=b'{"flows": []}', headers={"content-type": "multipart/form-data"})
    assert response.status_code == 400, response.text
    assert (
        response.json()["error"]
        == "the request body cannot be read as multipart/form-data: Missing boundary in multipart."
    )


def test_a_multipart_part_without_a_name_is_a_400(http: httpx.Client) -> None:
    body = b"--XX\r\n\r\nhello\r\n--XX--\r\n"
    response = http.post("/analyze_csv", content=body, headers={"content-type": "multipart/form-data; boundary=XX"})
    assert response.status_code == 400, response.text
    assert "Content-Disposition" in response.json()["error"]


def test_a_file_field_naming_a_url_or_a_path_is_refused_and_never_fetched(
    http: httpx.Client, bait: tuple[str, list[str]]
) -> None:
    url, seen = bait
    for value in (url, "/etc/passwd", "file:///etc/passwd"):
        response = http.post("/analyze_csv", data={"file": value})
        assert response.status_code == 400, response.text
        assert response.json()["detail"] == [
            {
                "loc": ["file"],
                "msg": "'file' must be an uploaded file (a multipart/form-data file part); a URL or a path is never "
                "fetched",
                "type": "file_upload",
            }
        ]
    response = http.post("/analyze_csv", json={"file": url})
    assert response.status_code == 400, response.text
    assert seen == []


def test_duplicate_json_keys_are_refused(http: httpx.Client) -> None:
    flow = json.dumps(THREAT_MESSAGE)[:-1] + ', "src_bytes": -5}'
    response = http.post(
        "/detect_threat", content=f'{{"flows": [{flow}]}}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["detail"] == [
        {
            "loc": ["src_bytes"],
            "msg": "the key 'src_bytes' appears twice in one JSON object: each key may appear once",
            "type": "json_duplicate_key",
        }
    ]


@pytest.mark.parametrize("body", ["[1, 2]", '"flows"', "3", "null", '{"flows": []} trailing', "\ufeff{"])
def test_a_body_that_is_not_a_json_object_is_a_400(http: httpx.Client, body: str) -> None:
    response = http.post("/detect_threat", content=body.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    (error,) = response.json()["detail"]
    assert error["type"] in {"model_type", "json_invalid"} and "Input\n" not in error["msg"]
    assert "for Input" not in response.text and "instance of" not in response.text


def test_huge_integers_are_refused_not_read_as_infinity(http: httpx.Client) -> None:
    body = json.dumps({"flows": [{**THREAT_MESSAGE, "src_bytes": 10**400}]})
    response = http.post("/detect_threat", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(["flows", 0, "src_bytes"], "float32_range")]


def test_an_unknown_category_is_scored_and_said(http: httpx.Client) -> None:
    def unknown_total() -> float:
        lines = http.get("/metrics").text.splitlines()
        return sum(
            float(line.split()[-1])
            for line in lines
            if line.startswith('nids_unknown_categories_total{feature="service"')
        )

    before = unknown_total()
    flows = [THREAT_MESSAGE, {**THREAT_MESSAGE, "service": "no-such-service"}]
    response = http.post("/detect_threat", json={"flows": flows})
    assert response.status_code == 200, response.text
    assert [p["unknown_categories"] for p in response.json()] == [[], ["service"]]
    assert unknown_total() == before + 1


def test_an_empty_csv_is_a_400(http: httpx.Client) -> None:
    response = http.post("/analyze_csv", files={"file": ("empty.csv", b"", "text/csv")})
    assert response.status_code == 400, response.text
    assert response.json()["detail"][0]["loc"] == ["file"]


@pytest.mark.parametrize("headers", [{}, {"content-type": "application/x-www-form-urlencoded"}])
def test_json_without_its_content_type_is_read_as_json(http: httpx.Client, headers: dict[str, str]) -> None:
    """No content type, or curl's default for `-d`: the body is the JSON it is, not a form missing `flows`."""
    body = json.dumps({"flows": [THREAT_MESSAGE, THREAT_MESSAGE]}).encode()
    response = http.post("/detect_threat", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert len(response.json()) == 2 and "prediction_score" in response.json()[0]
