"""The HTTP API through the real app (ASGI test client) over a lakehouse built by real materializations."""

from __future__ import annotations

import datetime as dt
import io
import json

import polars as pl
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

import lakehouse
import serving.app
from lakehouse.schema import CLEAN_BARS
from lakehouse.storage import Storage

from serving_lakehouse import FIRST_DAY, LAST_DAY, make_app

EX = "simulated"


@pytest.fixture(scope="module")
def client(built):
    root, inst = built
    with TestClient(make_app(root, inst)) as c:
        yield c


def bars(root, interval, start, end, symbol="BTC/USDT"):
    return lakehouse.read_bars(symbol, interval, start, end, root=str(root))


def test_bars_as_json_records_with_iso_utc_timestamps(client, built):
    root, _ = built
    r = client.get("/v1/bars/BTC-USDT", params={"interval": "1h", "start": "2024-03-08", "end": "2024-03-09"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    rows = r.json()
    expected = bars(root, "1h", "2024-03-08", "2024-03-09")
    assert len(rows) == expected.height == 48
    assert rows[0]["timestamp"] == "2024-03-08T00:00:00Z" and rows[-1]["timestamp"] == "2024-03-09T23:00:00Z"
    assert [row["close"] for row in rows] == expected["close"].to_list()
    assert rows[0].keys() == set(expected.columns)


def test_defaults_are_today_and_1h(client):
    rows = client.get("/v1/bars/btc-usdt").json()  # the path form is case-insensitive, like symbols elsewhere
    assert {row["timestamp"][:10] for row in rows} == {LAST_DAY.isoformat()}
    assert {row["interval"] for row in rows} == {"1h"}


@pytest.mark.parametrize("how", ["query", "accept"])
def test_every_format_holds_the_same_rows(client, built, how):
    root, _ = built
    expected = bars(root, "15m", "2024-03-07", "2024-03-10")
    params = {"interval": "15m", "start": "2024-03-07", "end": "2024-03-10"}

    def get(fmt, media):
        if how == "query":
            return client.get("/v1/bars/BTC-USDT", params={**params, "format": fmt})
        return client.get("/v1/bars/BTC-USDT", params=params, headers={"Accept": media})

    arrow = get("arrow", "application/vnd.apache.arrow.stream")
    assert arrow.headers["content-type"] == "application/vnd.apache.arrow.stream"
    assert pl.from_arrow(pa.ipc.open_stream(arrow.content).read_all()).equals(expected)
    parquet = get("parquet", "application/vnd.apache.parquet")
    assert pl.read_parquet(io.BytesIO(parquet.content)).equals(expected)
    csv = get("csv", "text/csv")
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0].split(",") == expected.columns and len(lines) == expected.height + 1
    assert lines[1].startswith("2024-03-07T00:00:00Z,15m,")
    assert len(get("json", "application/json").json()) == expected.height


def test_accept_with_q_values_and_unservable_accept(client):
    params = {"interval": "1d", "start": "2024-03-07"}
    r = client.get("/v1/bars/BTC-USDT", params=params, headers={"Accept": "text/html;q=0.9, text/csv;q=0.5"})
    assert r.headers["content-type"].startswith("text/csv")
    r = client.get("/v1/bars/BTC-USDT", params=params, headers={"Accept": "image/png"})
    assert r.status_code == 406 and "cannot produce" in r.json()["error"]


def test_long_ranges_stream_in_pieces_with_the_same_content(client, built, monkeypatch):
    root, _ = built
    monkeypatch.setattr(serving.app, "STREAM_DAYS", 1)  # this lakehouse holds 4 days: stream day by day
    params = {"interval": "1m", "start": "2024-03-07", "end": "2024-03-10"}
    expected = bars(root, "1m", "2024-03-07", "2024-03-10")
    with client.stream("GET", "/v1/bars/BTC-USDT", params={**params, "format": "arrow"}) as r:
        assert "content-length" not in r.headers  # chunked: not built whole in memory
        pieces = list(r.iter_bytes())
    table = pa.ipc.open_stream(b"".join(pieces)).read_all()
    assert pl.from_arrow(table).equals(expected)
    assert len(json.loads(client.get("/v1/bars/BTC-USDT", params=params).content)) == expected.height
    csv = client.get("/v1/bars/BTC-USDT", params={**params, "format": "csv"}).text.splitlines()
    assert len(csv) == expected.height + 1 and csv.count(csv[0]) == 1  # one header
    parquet = client.get("/v1/bars/BTC-USDT", params={**params, "format": "parquet"}).content
    assert pl.read_parquet(io.BytesIO(parquet)).equals(expected)


def test_row_limit_is_a_clear_error(client):
    r = client.get("/v1/bars/BTC-USDT", params={"interval": "1m", "start": "2024-03-07", "end": "2024-03-10",
                                                "limit": 1000})
    assert r.status_code == 400
    body = r.json()
    assert body["limit"] == 1000 and body["rows"] == 4 * 1440
    assert "more than the limit of 1000" in body["error"] and "fewer days" in body["error"]
    assert client.get("/v1/bars/BTC-USDT", params={"interval": "1h", "limit": 24}).status_code == 200
    r = client.get("/v1/bars/BTC-USDT", params={"limit": 10**9})
    assert r.status_code == 400 and "LAKEHOUSE_API_MAX_ROWS" in r.json()["error"]


def test_indicators_signals_and_scores(client, built):
    root, _ = built
    ind = client.get("/v1/indicators/ETH-USDT", params={"interval": "4h", "start": "2024-03-07"}).json()
    expected = lakehouse.read_indicators("ETH/USDT", "4h", "2024-03-07", root=str(root))
    assert [r["rsi_14"] for r in ind] == expected["rsi_14"].to_list()
    sig = lakehouse.read_signals("BTC/USDT", FIRST_DAY, LAST_DAY, root=str(root))
    assert sig.height > 0
    rule = sig["rule"][0]
    got = client.get("/v1/signals/BTC-USDT", params={"start": FIRST_DAY.isoformat(), "rule": rule, "interval": "all"}).json()
    assert len(got) == sig.filter(pl.col("rule") == rule).height and {g["rule"] for g in got} == {rule}
    scores = client.get("/v1/scores").json()
    assert [s["symbol"] for s in scores] == lakehouse.read_scores(root=str(root))["symbol"].to_list()
    only = client.get("/v1/scores", params={"symbols": "ETH-USDT", "format": "csv"}).text.splitlines()
    assert len(only) == 2 and ",ETH/USDT," in only[1]


def test_symbols_status_and_coverage(client):
    syms = client.get("/v1/symbols").json()
    assert [(s["symbol"], s["path"], s["tracked"], s["start"]) for s in syms] == [
        ("BTC/USDT", "BTC-USDT", True, "2024-03-07"), ("ETH/USDT", "ETH-USDT", True, "2024-03-07")]
    status = client.get("/v1/status").json()
    btc = status["symbols"][0]
    assert (btc["symbol"], btc["freshness"], btc["completeness_pct"], btc["last_candle"], btc["open_gaps"]) == (
        "BTC/USDT", "fresh", 100.0, "2024-03-10T12:33:00Z", 0)
    assert btc["last_run"]["status"] == "SUCCESS" and status["dagster"]["available"] is True
    assert status["runs_in_flight"] == []
    cov = client.get("/v1/coverage", params={"days": 6}).json()
    assert (cov["first_day"], cov["last_day"]) == ("2024-03-05", "2024-03-10")
    assert [s["cells"] for s in cov["symbols"]] == ["..cccc", "..cccc"]


def test_etag_last_modified_and_304(client):
    url = "/v1/bars/BTC-USDT?interval=1h&start=2024-03-07&end=2024-03-08"
    r = client.get(url)
    etag, modified = r.headers["etag"], r.headers["last-modified"]
    assert r.headers["cache-control"] == "public, max-age=300"  # closed days
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert client.get(url, headers={"If-Modified-Since": modified}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get(url + "&format=csv").headers["etag"] != etag  # one ETag per representation
    assert client.get("/v1/bars/BTC-USDT").headers["cache-control"] == "public, max-age=10"  # today moves


def test_a_rematerialized_partition_changes_the_etag_and_is_not_served_from_cache(lake):
    root, inst = lake
    with TestClient(make_app(root, inst)) as c:
        url = "/v1/bars/BTC-USDT?interval=1h"  # today's bars: a hot, cached read
        first = c.get(url)
        assert first.headers["x-cache"] == "miss" and c.get(url).headers["x-cache"] == "hit"
        storage = Storage(root)
        df = storage.read_partition(CLEAN_BARS, EX, "BTC/USDT", LAST_DAY)
        storage.write_partition(CLEAN_BARS, EX, "BTC/USDT", LAST_DAY, df.with_columns(pl.col("close") + 1))
        second = c.get(url, headers={"If-None-Match": first.headers["etag"]})
        assert second.status_code == 200 and second.headers["etag"] != first.headers["etag"]
        assert second.headers["x-cache"] == "miss"
        assert second.json()[0]["close"] == pytest.approx(first.json()[0]["close"] + 1)
        scores = c.get("/v1/scores")
        assert c.get("/v1/scores").headers["x-cache"] == "hit"
        s = storage.read_table("scores")
        storage.write_table("scores", s.with_columns(pl.col("score") * 0))
        changed = c.get("/v1/scores")
        assert changed.headers["x-cache"] == "miss" and changed.headers["etag"] != scores.headers["etag"]
        assert {row["score"] for row in changed.json()} == {0}


@pytest.mark.parametrize("url, status, says", [
    ("/v1/bars/NOPE-USDT", 404, "unknown symbol NOPE/USDT"),
    ("/v1/bars/BTC_USDT", 400, "invalid symbol 'BTC_USDT'"),
    ("/v1/bars/..%2F..%2Fetc", 404, "no such endpoint"),
    ("/v1/bars/..", 404, "no such endpoint"),  # the client resolves the dots: /v1/
    ("/v1/bars/%2E%2E", 400, "invalid symbol '..'"),
    ("/v1/bars/BTC-USDT%00", 400, "invalid symbol"),
    ("/v1/bars/BTC-..%5CUSDT", 400, "invalid symbol"),
    ("/v1/bars/BTC-USDT?interval=7m", 400, "unknown interval '7m'; choose one of 1m, 5m, 15m, 1h, 4h, 1d"),
    ("/v1/bars/BTC-USDT?start=2024-13-01", 400, "invalid start '2024-13-01': expected YYYY-MM-DD"),
    ("/v1/bars/BTC-USDT?start=2024-03-10&end=2024-03-01", 400, "start 2024-03-10 is after end 2024-03-01"),
    ("/v1/bars/BTC-USDT?format=xml", 400, "unknown format 'xml'"),
    ("/v1/bars/BTC-USDT?limit=abc", 400, "limit"),
    ("/v1/signals/BTC-USDT?rule=nope", 400, "unknown rule 'nope'"),
    ("/v1/scores?symbols=BTC/USDT", 400, "invalid symbols"),
    ("/v1/coverage?days=0", 400, "days"),
    ("/v1/nothing", 404, "no such endpoint"),
])
def test_bad_input_is_a_4xx_saying_what_was_wrong(client, url, status, says):
    r = client.get(url)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert says in r.json()["error"]


def test_read_only(client):
    r = client.post("/v1/scores")
    assert r.status_code == 405 and "read-only" in r.json()["error"]


def test_an_unreadable_partition_is_named_without_server_paths(lake):
    root, inst = lake
    path = Storage(root).partition_path(CLEAN_BARS, EX, "ETH/USDT", dt.date(2024, 3, 8))
    path.write_bytes(path.read_bytes()[:100])
    with TestClient(make_app(root, inst)) as c:
        r = c.get("/v1/bars/ETH-USDT", params={"start": "2024-03-07", "end": "2024-03-09"})
    assert r.status_code == 503
    error = r.json()["error"]
    assert "date=2024-03-08" in error and "lakehouse repair" in error and str(root) not in error


def test_health_and_openapi(client):
    assert client.get("/v1/health").json() == {"status": "ok", "lakehouse_readable": True, "cache": "memory"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/symbols", "/v1/bars/{symbol}", "/v1/indicators/{symbol}", "/v1/signals/{symbol}", "/v1/scores",
            "/v1/status", "/v1/health", "/v1/coverage"} <= set(paths)


def test_works_without_a_dagster_instance(built):
    root, _ = built

    def broken():
        raise RuntimeError("no instance here")

    with TestClient(make_app(root, dagster_instance=broken)) as c:
        status = c.get("/v1/status").json()
        assert c.get("/v1/bars/BTC-USDT").status_code == 200
    assert status["dagster"] == {"available": False, "reason": "Dagster instance unavailable: RuntimeError: no instance here"}
    assert [s["last_run"] for s in status["symbols"]] == [None, None]


def test_status_serves_the_last_audit_while_a_fresh_one_runs(lake, monkeypatch):
    import time

    import serving.status

    root, inst = lake
    with TestClient(make_app(root, inst)) as c:
        assert c.get("/v1/coverage", params={"days": 4}).json()["symbols"][0]["cells"] == "cccc"
        Storage(root).partition_path("raw_ohlcv", EX, "BTC/USDT", dt.date(2024, 3, 8)).unlink()
        monkeypatch.setattr(serving.status, "AUDIT_TTL_S", 0.0)
        # The page never waits for an audit: the previous one answers, a background one starts.
        assert c.get("/v1/coverage", params={"days": 4}).json()["symbols"][0]["cells"] == "cccc"
        deadline = time.monotonic() + 20
        cells = None
        while time.monotonic() < deadline and cells != "cmcc":
            time.sleep(0.1)
            cells = c.get("/v1/coverage", params={"days": 4}).json()["symbols"][0]["cells"]
        assert cells == "cmcc"
        monkeypatch.setattr(serving.status, "AUDIT_MAX_STALE_S", 0.0)  # too old to serve: wait for a fresh one
        Storage(root).partition_path("raw_ohlcv", EX, "BTC/USDT", dt.date(2024, 3, 9)).unlink()
        assert c.get("/v1/coverage", params={"days": 4}).json()["symbols"][0]["cells"] == "cmmc"


def test_a_damaged_registry_is_reported_not_a_traceback(lake):
    root, inst = lake
    (root / "_meta" / "symbols.json").write_text("{not json")
    with TestClient(make_app(root, inst)) as c:
        r = c.get("/v1/bars/BTC-USDT")
    assert r.status_code == 503 and "symbols.json is not valid JSON" in r.json()["error"]
    assert str(root) not in r.json()["error"]
