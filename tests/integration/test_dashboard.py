"""The dashboard in a real browser: Debian's headless chromium, driven by Playwright, against a live server.

It loads /dashboard, waits for the live stream, sends real requests and sees their predictions appear (and a page
opened afterwards shows them in its attack rate of the last 60 s, from the server), then saves
a screenshot (the one in docs/dashboard.png comes from this test: NIDS_DASHBOARD_SCREENSHOT=docs/dashboard.png).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from nids.core.features import THREAT_FEATURES
from training.data import NSL_KDD_TEST

from .conftest import Server

pytestmark = [pytest.mark.integration]

ANALYST_TOKEN = "dashboard-analyst-token"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ATTACK_FLOW: dict[str, Any] = json.loads((FIXTURES / "original_attack_flow.json").read_text())
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def server(model_store: Any, serve: Callable[..., Server]) -> Server:
    fast = {"NIDS_PREDICTION_LOG_FLUSH_SECONDS": "0.1", "NIDS_REALTIME_POLL_SECONDS": "0.1"}
    return serve(model_store.home, **fast, NIDS_DRIFT_REFRESH_SECONDS="0.2", NIDS_ADMIN_TOKEN=ANALYST_TOKEN)


def post(server: Server, path: str, body: dict[str, Any]) -> None:
    response = httpx.post(server.url + path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (.ci/run installs it)")
def test_dashboard_shows_a_prediction_live(server: Server, tmp_path: Path) -> None:
    import pandas as pd
    from playwright.sync_api import expect, sync_playwright

    kdd = pd.read_csv(NSL_KDD_TEST, nrows=300)[list(THREAT_FEATURES)].to_dict("records")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url + "/dashboard")
            expect(page.locator("#stream")).to_have_text("stream: live", timeout=15_000)
            expect(page.locator("#ready")).to_have_text("ready")
            expect(page.locator("#threat-model")).to_contain_text("threat_detector:")

            # real flows: KDDTest+ rows, and CICFlowMeter flows through the whole pipeline (attack type, action)
            for start in range(0, len(kdd), 100):
                post(server, "/detect_threat", {"flows": kdd[start : start + 100]})
            flows = [{**ATTACK_FLOW, "src_ip": f"198.51.100.{i}", "flow_id": f"dash-{i}"} for i in range(1, 6)]
            post(server, "/analyze", {"flows": flows})

            expect(page.locator("#recent tr").first).to_contain_text("SSH-Patator", timeout=15_000)
            expect(page.locator("#actions tr").first).to_contain_text("198.51.100.")
            expect(page.locator("#total")).to_have_text("305")
            expect(page.locator("#types")).to_contain_text("SSH-Patator")
            # a page opened after the predictions: the last 60 s come from the server, not from its own stream
            later = browser.new_page()
            later.on("pageerror", lambda error: errors.append(str(error)))
            later.goto(server.url + "/dashboard")
            window = httpx.get(server.url + "/api/v1/predictions/timeline").json()
            assert window["predictions"] == 305 and window["attacks"] > 0, window
            expect(later.locator("#live-counts")).to_have_text(
                f"{window['attacks']} attacks of 305 predictions", timeout=15_000
            )
            expect(later.locator("#live-rate")).to_have_text(re.compile(r"^(?!0\.0%)\d+\.\d%$"))
            expect(later.locator("#spark polyline")).to_have_attribute("points", re.compile(r",(?!85 |85$)\d"))
            later.close()
            page.wait_for_timeout(300)  # past the server's drift refresh (0.2 s here)
            page.evaluate("loadDrift()")  # the page itself reloads drift every 15 s
            expect(page.locator("#drift")).to_contain_text("threat (300 recent rows)")
            # a selected prediction: why the model scored it so, and the analyst's verdict on it
            page.locator("#recent tr").first.click()
            expect(page.locator("#selected")).to_contain_text("P(SSH-Patator)", timeout=15_000)
            expect(page.locator("#selected .contribution")).to_have_count(9)  # the top 8 and the rest
            page.fill("#verdict-token", ANALYST_TOKEN)
            page.click("#verdict-form button[data-verdict=true_positive]")
            expect(page.locator("#verdict-status")).to_contain_text("recorded: true_positive by admin")
            expect(page.locator("#feedback tr")).to_have_count(1)
            expect(page.locator("#feedback tr").first).to_contain_text("attack_classifier:")
            page.wait_for_timeout(500)
            shot = Path(os.environ.get("NIDS_DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png"))
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert not errors, errors
        finally:
            browser.close()


VIEWER_TOKEN = "dashboard-viewer-token"


@pytest.fixture(scope="module")
def guarded(model_store: Any, serve: Callable[..., Server]) -> Server:
    """A server in the `required` mode: every read needs a token."""
    return serve(model_store.home, NIDS_AUTH_MODE="required", NIDS_VIEWER_TOKEN=VIEWER_TOKEN)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (.ci/run installs it)")
def test_dashboard_works_with_a_viewer_token_never_put_in_a_url(guarded: Server) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            urls: list[str] = []
            page.on("request", lambda request: urls.append(request.url))
            page.on("websocket", lambda ws: urls.append(ws.url))
            page.goto(guarded.url + "/dashboard")
            expect(page.locator("#auth")).to_be_visible(timeout=15_000)
            expect(page.locator("#stream")).to_have_text("stream: needs a viewer token")
            page.fill("#token", VIEWER_TOKEN)
            page.click("#auth button")
            expect(page.locator("#stream")).to_have_text("stream: live", timeout=15_000)
            expect(page.locator("#threat-model")).to_contain_text("threat_detector:")
            expect(page.locator("#auth")).to_be_hidden()
            assert any("/ws/realtime?ticket=" in url for url in urls)
            assert not [url for url in urls if VIEWER_TOKEN in url], "the token is never part of a URL"
        finally:
            browser.close()
