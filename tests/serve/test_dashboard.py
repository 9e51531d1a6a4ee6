"""The dashboard in headless Chromium (Debian's chromium, driven by Playwright): every chart draws real requests."""

from __future__ import annotations

import shutil

import httpx
import pytest

CHARTS = ("rps", "latency", "predictions", "feedback", "drift")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:  # make test installs it; a bare pytest run on a machine without it must say so, not skip
        pytest.fail("Chromium is not installed: run `make test` (it installs Debian's chromium) or apt-get install "
                    "chromium")  # fmt: skip
    return found


def test_dashboard_draws_every_chart_from_real_requests(server, tmp_path):
    from playwright.sync_api import sync_playwright

    for text in ("a good film", "bad", "the rain", "fine"):
        rid = httpx.post(server.url + "/v1/classify", json={"model": "clf", "input": text}, timeout=30).json()["id"]
        httpx.post(server.url + "/v1/feedback", json={"request_id": rid, "rating": "up"}, timeout=30)
    httpx.post(server.url + "/v1/chat/completions", timeout=60,
               json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})  # fmt: skip
    data = httpx.get(server.url + "/dashboard/data", timeout=30).json()
    assert data["traffic"]["clf"]["requests"] >= 4 and sum(data["traffic"]["clf"]["rps"]) > 0
    assert data["feedback"]["clf"]["positive"] >= 4

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=flags)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/dashboard")
            page.wait_for_selector("body[data-ready='1']", timeout=30000)
            for chart in CHARTS:
                assert int(page.get_attribute(f"#{chart}", "data-traces")) >= 1, chart
                assert page.locator(f"#{chart} .main-svg").count() >= 1, chart
            assert page.locator("#rps .scatterlayer .trace").count() >= 2  # a line per served model
            assert page.locator("#predictions .barlayer .trace").count() == 2  # served and validation
            assert "clf" in page.inner_text("#runs") and "chat" in page.inner_text("#runs")
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert errors == []
        finally:
            browser.close()
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
