"""The coverage page in real headless Chromium (Debian chromium + chromium-driver, driven by Selenium): the heatmap
draws the right state for each symbol x day of a lakehouse with a deleted, a truncated and a gap partition."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
import uuid
from pathlib import Path

import polars as pl
import pytest
from dagster import instance_for_test

from lakehouse.audit import Auditor
from lakehouse.config import Settings
from lakehouse.registry import Registry
from lakehouse.schema import RAW_OHLCV
from lakehouse.storage import Storage
from lakehouse.timeutil import MINUTE_MS

from helpers import NOW_MS, add_symbols, free_port
from serving_lakehouse import make_app

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (make install installs them when run as root)")]
EX = "simulated"
D7, D8, D9, D10 = (dt.date(2024, 3, d) for d in (7, 8, 9, 10))
LATER_MS = NOW_MS + 30 * MINUTE_MS  # today's newest candle is then 31 minutes old: stale


def drop_minutes(storage, symbol, day, first, count):
    df = storage.read_partition(RAW_OHLCV, EX, symbol, day)
    storage.write_partition(RAW_OHLCV, EX, symbol, day, pl.concat([df[:first], df[first + count:]]))


def confirm_gap(storage, symbol, day):
    """Three refetches that return the same gap, as the repair sensor would see them: the gap is confirmed."""
    settings = Settings.from_env({"LAKEHOUSE_RETRY_DELAY_MINUTES": "0"})
    tracked = list(Registry(storage.root).load().values())
    for _ in range(4):
        audit = Auditor(storage, settings, [RAW_OHLCV]).run(tracked, NOW_MS)
        audit.commit([r for r in audit.plan if r.symbol == symbol and r.start <= day <= r.end])
        df = storage.read_partition(RAW_OHLCV, EX, symbol, day)
        storage.write_partition(RAW_OHLCV, EX, symbol, day, df)  # the refetch lands with the same candles
    audit = Auditor(storage, settings, [RAW_OHLCV]).run(tracked, NOW_MS)
    assert audit.confirmed_gaps == 1


@pytest.fixture
def served(lake, tmp_path):
    """The damaged lakehouse served by uvicorn on a free loopback port, with one run in flight."""
    import uvicorn
    from dagster import DagsterRun, DagsterRunStatus

    root, _ = lake
    storage = Storage(root)
    storage.partition_path(RAW_OHLCV, EX, "BTC/USDT", D9).unlink()  # deleted
    path = storage.partition_path(RAW_OHLCV, EX, "ETH/USDT", D9)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    drop_minutes(storage, "BTC/USDT", D8, 180, 20)  # a gap at the source, confirmed
    confirm_gap(storage, "BTC/USDT", D8)
    drop_minutes(storage, "ETH/USDT", D8, 600, 7)  # an open gap

    home = tmp_path / "runs_home"
    home.mkdir()
    with instance_for_test(temp_dir=str(home)) as inst:
        add_symbols(inst, "BTC/USDT", "ETH/USDT")
        inst.add_run(DagsterRun(job_name="__ephemeral_asset_job__", run_id=str(uuid.uuid4()),
                                status=DagsterRunStatus.STARTED,
                                tags={"dagster/asset_partition_range_start": "2024-03-09|BTC/USDT",
                                      "dagster/asset_partition_range_end": "2024-03-10|BTC/USDT"}))
        port = free_port()
        app = make_app(root, inst, clock=lambda: LATER_MS, env={"LAKEHOUSE_UI_URL": "http://127.0.0.1:3000"})
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1400,900", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


PIXEL = """
const [symbol, day] = arguments;
const c = window.lakehouseCoverage.cell(symbol, day);
if (!c) return null;
const canvas = document.getElementById("heatmap"), dpr = window.devicePixelRatio || 1;
const px = canvas.getContext("2d").getImageData(Math.floor((c.x + 1) * dpr), Math.floor((c.y + 1) * dpr), 1, 1).data;
return {code: c.code, rgb: "#" + [px[0], px[1], px[2]].map((v) => v.toString(16).padStart(2, "0")).join("")};
"""


def test_heatmap_draws_each_cell_state(served, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(served + "/?days=7&refresh=2")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return window.lakehouseCoverage.renders") >= 1)
    colors = browser.execute_script("return window.lakehouseCoverage.colors")
    expected = {
        ("BTC/USDT", D7): "complete", ("BTC/USDT", D8): "confirmed source gap", ("BTC/USDT", D9): "missing",
        ("BTC/USDT", D10): "stale today",
        ("ETH/USDT", D7): "complete", ("ETH/USDT", D8): "incomplete", ("ETH/USDT", D9): "invalid (unreadable)",
        ("ETH/USDT", D10): "stale today",
        ("BTC/USDT", dt.date(2024, 3, 5)): "not tracked",
    }
    drawn = {key: browser.execute_script(PIXEL, key[0], key[1].isoformat()) for key in expected}
    browser.save_screenshot(str(tmp_path / "coverage.png"))
    assert {key: v["rgb"] for key, v in drawn.items()} == {key: colors[state] for key, state in expected.items()}
    # BTC's 9th and 10th are covered by the run in flight (upper-case code, a white mark in the cell).
    assert [drawn[("BTC/USDT", d)]["code"] for d in (D8, D9, D10)] == ["g", "M", "S"]

    rows = {r.get_attribute("data-symbol"): r.text for r in browser.find_elements("css selector", "#symbols tbody tr")}
    assert "fresh" in rows["BTC/USDT"] and "2024-03-10T12:33:00Z" in rows["BTC/USDT"]
    assert "2 (1447 min)" in rows["ETH/USDT"]  # its open gap and the unreadable day
    assert "1 (20 min)" in rows["BTC/USDT"]  # its confirmed source gap
    runs = browser.find_element("css selector", "#runs tbody").text
    assert "BTC/USDT 2024-03-09..2024-03-10" in runs and "STARTED" in runs
    # Links into the Dagster UI: the run, and the symbol's partitions.
    run_link = browser.find_element("css selector", "#runs tbody a").get_attribute("href")
    assert run_link.startswith("http://127.0.0.1:3000/runs/")
    symbol_link = browser.find_element("css selector", '#symbols tr[data-symbol="BTC/USDT"] a').get_attribute("href")
    assert symbol_link == "http://127.0.0.1:3000/assets/raw_ohlcv?view=partitions"
    # It refreshes itself.
    before = browser.execute_script("return window.lakehouseCoverage.renders")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return window.lakehouseCoverage.renders") > before)
    shutil.copy(tmp_path / "coverage.png", Path(tmp_path.parent) / "coverage-last.png")
