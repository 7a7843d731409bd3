"""The Binance emulator, exercised through real HTTP with the real ccxt client (and raw requests for statuses)."""

from __future__ import annotations

import datetime as dt
import json
import time

import ccxt
import pytest
import requests

from lakehouse.exchange.emulator import FAULT_KINDS, BinanceEmulator, _rate_limit_interval
from lakehouse.exchange.simulated import SimulatedSource
from lakehouse.timeutil import MINUTE_MS, day_start_ms

# 2024-03-10 12:34:30 UTC: mid-minute, so the forming candle is 12:34.
NOW_MS = day_start_ms(dt.date(2024, 3, 10)) + (12 * 60 + 34) * 60_000 + 30_000
FORMING_MS = NOW_MS // MINUTE_MS * MINUTE_MS


class FakeTime:
    """A rate-limit clock the test moves by hand, so windows and bans never depend on wall-clock timing."""

    def __init__(self, t: float = 1_700_000_000.25):  # 0.25 s into a window (windows align to epoch)
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def emulator():
    with BinanceEmulator(source=SimulatedSource(outage_rate=0.0), clock=lambda: NOW_MS) as emu:
        yield emu


def make_client(emu: BinanceEmulator, timeout_ms: int = 3000) -> ccxt.binance:
    client = ccxt.binance({"options": {"fetchMarkets": {"types": ["spot"]}}, "timeout": timeout_ms})
    client.urls["api"]["public"] = emu.url + "/api/v3"
    return client


@pytest.fixture
def client(emulator):
    c = make_client(emulator)
    yield c
    c.session.close()


def klines(emu: BinanceEmulator, **params):
    params = {"symbol": "BTCUSDT", "interval": "1m", **params}
    return requests.get(emu.url + "/api/v3/klines", params=params, timeout=5)


# data through ccxt ----------------------------------------------------------------------------------
def test_ccxt_loads_markets_and_fetches_ground_truth(emulator, client):
    markets = client.load_markets()
    assert {"BTC/USDT", "ETH/USDT", "DOGE/USDT", "ETH/BTC"} <= set(markets)
    btc = markets["BTC/USDT"]
    assert btc["spot"] and btc["active"] and btc["base"] == "BTC" and btc["quote"] == "USDT"
    assert btc["precision"]["price"] == 10.0 ** -emulator.source.markets["BTC/USDT"].decimals

    since = FORMING_MS - 3 * 86_400_000
    for symbol in ("BTC/USDT", "DOGE/USDT", "ETH/BTC"):  # 3, 9 and 6 price decimals
        got = client.fetch_ohlcv(symbol, "1m", since=since, limit=1000)
        truth = emulator.source.candles(symbol, since, since + 1000 * MINUTE_MS).tolist()
        assert len(got) == 1000
        assert [[float(x) for x in row] for row in got] == truth  # exact: strings round-trip to the same floats
        assert all(isinstance(row[0], int) for row in got)


def test_klines_raw_format(emulator):
    rows = klines(emulator, startTime=FORMING_MS - 10 * MINUTE_MS, limit=2).json()
    assert len(rows) == 2
    row = rows[0]
    assert len(row) == 12
    assert row[0] == FORMING_MS - 10 * MINUTE_MS and row[6] == row[0] + 59_999
    assert all(isinstance(row[i], str) for i in (1, 2, 3, 4, 5, 7, 9, 10, 11))
    assert isinstance(row[8], int) and row[11] == "0"


def test_forming_candle_served_nothing_newer(emulator, client):
    latest = client.fetch_ohlcv("BTC/USDT", "1m", limit=5)  # no since: the most recent candles
    assert [r[0] for r in latest] == [FORMING_MS - i * MINUTE_MS for i in (4, 3, 2, 1, 0)]
    assert client.fetch_ohlcv("BTC/USDT", "1m", since=FORMING_MS + MINUTE_MS) == []
    # endTime caps the window, inclusively
    page = klines(emulator, startTime=FORMING_MS - 5 * MINUTE_MS, endTime=FORMING_MS - 2 * MINUTE_MS).json()
    assert [r[0] for r in page] == [FORMING_MS - i * MINUTE_MS for i in (5, 4, 3, 2)]


def test_since_zero_returns_listing_and_limits(emulator):
    listing = emulator.source.markets["SOL/USDT"].listed_at_ms
    rows = klines(emulator, symbol="SOLUSDT", startTime=0, limit=3).json()
    assert rows[0][0] == -(-listing // MINUTE_MS) * MINUTE_MS and len(rows) == 3
    assert len(klines(emulator, startTime=0).json()) == 500  # Binance's default limit
    assert len(klines(emulator, startTime=0, limit=5000).json()) == 1000  # and its cap


def test_gaps_are_skipped_and_pages_stay_full():
    outage = (FORMING_MS - 60 * MINUTE_MS, FORMING_MS - 30 * MINUTE_MS)
    source = SimulatedSource(outage_rate=0.0, outages=(outage,))
    with BinanceEmulator(source=source, clock=lambda: NOW_MS) as emu:
        rows = klines(emu, limit=100).json()  # most recent 100 reach back past the 30-minute gap
        ts = [r[0] for r in rows]
        assert len(ts) == 100 and ts[-1] == FORMING_MS
        assert not any(outage[0] <= t < outage[1] for t in ts)
        forward = klines(emu, startTime=outage[0] - 5 * MINUTE_MS, limit=10).json()
        assert [r[0] for r in forward][5:] == [outage[1] + i * MINUTE_MS for i in range(5)]


def test_binance_error_bodies(emulator, client):
    r = klines(emulator, symbol="NOPEUSDT")
    assert r.status_code == 400 and r.json() == {"code": -1121, "msg": "Invalid symbol."}
    assert "X-MBX-USED-WEIGHT-1M" in r.headers
    r = klines(emulator, interval="5m")
    assert r.status_code == 400 and r.json() == {"code": -1120, "msg": "Invalid interval."}
    r = klines(emulator, startTime=10, endTime=5)
    assert r.status_code == 400 and r.json()["code"] == -1023
    client.load_markets()
    with pytest.raises(ccxt.BadRequest):
        client.fetch_ohlcv("BTC/USDT", "5m")


def test_ping_time_exchange_info(emulator):
    assert requests.get(emulator.url + "/api/v3/ping", timeout=5).json() == {}
    assert requests.get(emulator.url + "/api/v3/time", timeout=5).json() == {"serverTime": NOW_MS}
    info = requests.get(emulator.url + "/api/v3/exchangeInfo", timeout=5).json()
    weight = [r for r in info["rateLimits"] if r["rateLimitType"] == "REQUEST_WEIGHT"]
    assert weight == [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}]
    assert {s["symbol"] for s in info["symbols"]} >= {"BTCUSDT", "ETHBTC"}
    assert _rate_limit_interval(2) == ("SECOND", 2)
    assert _rate_limit_interval(60) == ("MINUTE", 1)
    assert _rate_limit_interval(300) == ("MINUTE", 5)
    assert _rate_limit_interval(3600) == ("HOUR", 1)


# weight, 429 and 418 ----------------------------------------------------------------------------------
def test_weight_header_429_then_418_ban():
    now = FakeTime()
    with BinanceEmulator(source=SimulatedSource(outage_rate=0.0), clock=lambda: NOW_MS, weight_limit=7,
                         weight_window_s=2, ban_s=30, rate_clock=now) as emu:
        rule = [r for r in emu.exchange_info()["rateLimits"] if r["rateLimitType"] == "REQUEST_WEIGHT"]
        assert rule == [{"rateLimitType": "REQUEST_WEIGHT", "interval": "SECOND", "intervalNum": 2, "limit": 7}]
        used = [int(klines(emu, limit=1).headers["X-MBX-USED-WEIGHT-1M"]) for _ in range(3)]
        assert used == [2, 4, 6]

        r = klines(emu, limit=1)  # 6 + 2 > 7
        assert r.status_code == 429 and r.json()["code"] == -1003
        assert r.headers["Retry-After"] == "2"  # ceil(1.75 s until the window resets)
        assert r.headers["X-MBX-USED-WEIGHT-1M"] == "6"

        now.t += 1.0  # still inside the Retry-After: that earns a ban
        r = klines(emu, limit=1)
        assert r.status_code == 418 and r.headers["Retry-After"] == "30"
        now.t += 5.0  # the weight window has long reset, but the ban holds
        r = requests.get(emu.url + "/api/v3/ping", timeout=5)
        assert r.status_code == 418 and r.headers["Retry-After"] == "25"
        assert "X-MBX-USED-WEIGHT-1M" in r.headers

        client = make_client(emu)
        with pytest.raises(ccxt.DDoSProtection):
            client.fetch_ohlcv("BTC/USDT", "1m", limit=1)  # load_markets itself is refused
        assert (emu.count_429, emu.count_418) == (1, 3)

        now.t += 30.0
        r = klines(emu, limit=1)
        assert r.status_code == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == "2"
        assert emu.stats()["clients"]["127.0.0.1"]["banned_s"] == 0


def test_ccxt_sees_429_as_ddos_protection_and_waiting_out_retry_after_avoids_ban():
    now = FakeTime()
    with BinanceEmulator(source=SimulatedSource(outage_rate=0.0), clock=lambda: NOW_MS, weight_limit=24,
                         weight_window_s=2, rate_clock=now) as emu:
        client = make_client(emu)
        client.load_markets()  # 20
        client.fetch_ohlcv("BTC/USDT", "1m", limit=1)  # 22
        client.fetch_ohlcv("BTC/USDT", "1m", limit=1)  # 24
        with pytest.raises(ccxt.DDoSProtection):
            client.fetch_ohlcv("BTC/USDT", "1m", limit=1)
        assert client.last_response_headers["Retry-After"] == "2"
        now.t += 2  # a client that honours Retry-After is not banned
        assert len(client.fetch_ohlcv("BTC/USDT", "1m", limit=1)) == 1
        assert (emu.count_429, emu.count_418) == (1, 0)


def test_real_time_window_reset():
    with BinanceEmulator(source=SimulatedSource(outage_rate=0.0), clock=lambda: NOW_MS, weight_limit=2,
                         weight_window_s=1) as emu:
        for _ in range(50):  # window boundaries may pass in between (a loaded machine), so ask until it bites
            r = requests.get(emu.url + "/api/v3/ping", timeout=5)
            if r.status_code == 429:
                break
        assert r.status_code == 429
        time.sleep(int(r.headers["Retry-After"]))
        assert requests.get(emu.url + "/api/v3/ping", timeout=5).status_code == 200
        assert emu.count_418 == 0


# fault injection ---------------------------------------------------------------------------------------
def test_every_fault_kind_over_raw_http(emulator):
    full = klines(emulator, limit=10)
    assert full.status_code == 200 and len(full.json()) == 10

    def after(kind, **params):
        emulator.inject(kind, **params)
        return klines(emulator, limit=10)

    r = after("429", retry_after=3)
    assert r.status_code == 429 and r.headers["Retry-After"] == "3" and r.json()["code"] == -1003
    r = after("418", retry_after=7)
    assert r.status_code == 418 and r.headers["Retry-After"] == "7"
    r = after("500")
    assert r.status_code == 500 and r.json()["code"] == -1000
    r = after("502")
    assert r.status_code == 502 and r.text.startswith("<html>")
    r = after("503_maintenance")
    assert r.status_code == 503 and r.json() == {"code": 1, "msg": "System is under maintenance."}
    r = after("truncated")
    assert r.status_code == 200 and r.text == full.text[: len(full.text) // 2]
    r = after("empty")
    assert r.status_code == 200 and r.text == ""
    r = after("html")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html") and "<html>" in r.text
    r = after("short")
    assert r.status_code == 200 and r.json() == full.json()[:5]

    emulator.inject("timeout", delay=1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(emulator.url + "/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1m"}, timeout=0.3)
    emulator.inject("timeout", delay=0.2)
    assert klines(emulator, limit=10).json() == full.json()  # a patient client gets the real answer

    # one-off by default: the next request is normal, and no ban was armed
    assert klines(emulator, limit=10).status_code == 200
    assert emulator.faults_served == 11
    assert (emulator.count_429, emulator.count_418) == (1, 1)
    assert set(FAULT_KINDS) == {"429", "418", "500", "502", "503_maintenance", "timeout", "truncated", "empty",
                                "html", "short"}


def test_faults_are_fifo_per_path_and_counted(emulator):
    emulator.inject("500", count=2)
    emulator.inject("502")
    emulator.inject("503_maintenance", path="/api/v3/ping")
    assert requests.get(emulator.url + "/api/v3/time", timeout=5).status_code == 200  # path does not match
    assert requests.get(emulator.url + "/api/v3/ping", timeout=5).status_code == 503
    assert [klines(emulator, limit=1).status_code for _ in range(4)] == [500, 500, 502, 200]
    emulator.inject("empty", path="*")
    assert requests.get(emulator.url + "/api/v3/time", timeout=5).text == ""
    with pytest.raises(ValueError):
        emulator.inject("404")


def test_sticky_injected_429_arms_the_ban(emulator):
    emulator.inject("429", retry_after=60, sticky=True)
    assert klines(emulator, limit=1).status_code == 429
    assert klines(emulator, limit=1).status_code == 418  # did not wait
    emulator.reset_limits()
    assert klines(emulator, limit=1).status_code == 200


def test_ccxt_behaviour_per_fault(emulator, client):
    client.load_markets()
    since = FORMING_MS - 60 * MINUTE_MS

    # Malformed 200 bodies do not raise: ccxt returns [] and only the raw body tells them from "no data".
    for kind, body_check in (
        ("truncated", lambda b: b.startswith("[[") and not b.endswith("]]")),
        ("empty", lambda b: b == ""),
        ("html", lambda b: b.startswith("<html>")),
    ):
        emulator.inject(kind)
        assert client.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=10) == []
        assert isinstance(client.last_http_response, str) and body_check(client.last_http_response)
    emulator.inject("short")
    assert len(client.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=10)) == 5

    raised = {}
    for kind in ("429", "418", "500", "502", "503_maintenance"):
        emulator.inject(kind, retry_after=1)
        with pytest.raises(ccxt.BaseError) as exc:
            client.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=10)
        raised[kind] = type(exc.value)
    assert raised == {
        "429": ccxt.DDoSProtection,
        "418": ccxt.DDoSProtection,
        "500": ccxt.OperationFailed,  # Binance's -1000 code wins over the status: not a NetworkError
        "502": ccxt.ExchangeNotAvailable,
        "503_maintenance": ccxt.OnMaintenance,
    }
    assert not issubclass(ccxt.OperationFailed, ccxt.NetworkError)

    quick = make_client(emulator, timeout_ms=300)
    quick.load_markets()
    emulator.inject("timeout", delay=1.0)
    with pytest.raises(ccxt.RequestTimeout):
        quick.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=10)

    emulator.set_outage(True)
    with pytest.raises(ccxt.ExchangeNotAvailable):
        client.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=10)
    assert requests.get(emulator.url + "/api/v3/ping", timeout=5).status_code == 503
    emulator.set_outage(False)
    assert len(client.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=10)) == 10


def test_ccxt_sends_until_as_end_time(emulator, client):
    client.load_markets()
    since, until = FORMING_MS - 10 * MINUTE_MS, FORMING_MS - 8 * MINUTE_MS
    got = client.fetch_ohlcv("BTC/USDT", "1m", since=since, params={"until": until})
    assert [r[0] for r in got] == [since, since + MINUTE_MS, until]
    assert f"endTime={until}" in client.last_request_url and "limit=1000" in client.last_request_url


# control endpoints and counters ----------------------------------------------------------------------------
def test_control_endpoints(emulator):
    base = emulator.url + "/_emulator"
    r = requests.post(base + "/faults", json={"kind": "502", "count": 2}, timeout=5)
    assert r.status_code == 200 and r.json()["queued"] == 2
    assert requests.post(base + "/faults", json={"kind": "nope"}, timeout=5).status_code == 400
    r = requests.post(base + "/faults", json={"kind": "429", "path": "/api/v3/ping", "retry_after": 4}, timeout=5)
    assert r.status_code == 200
    assert [klines(emulator, limit=1).status_code for _ in range(3)] == [502, 502, 200]
    r = requests.get(emulator.url + "/api/v3/ping", timeout=5)
    assert r.status_code == 429 and r.headers["Retry-After"] == "4"

    stats = requests.get(base + "/stats", timeout=5).json()
    assert stats["requests"] == 4 and stats["weight_used_total"] == 3 * 2 + 1
    assert stats["count_429"] == 1 and stats["count_418"] == 0
    assert stats["paths"] == {"/api/v3/klines": 3, "/api/v3/ping": 1}
    assert stats["faults_pending"] == 0
    assert emulator.requests == 4 and emulator.path_counts["/api/v3/klines"] == 3  # control calls not counted

    assert requests.post(base + "/outage", json={"on": True}, timeout=5).json() == {"outage": True}
    assert klines(emulator, limit=1).status_code == 503
    assert requests.post(base + "/reset", timeout=5).json() == {"reset": True}
    assert klines(emulator, limit=1).status_code == 200
    assert json.loads(requests.get(base + "/stats", timeout=5).text)["requests"] == 1

    emulator.reset_counters()
    assert (emulator.requests, emulator.weight_used_total, emulator.count_429, emulator.count_418) == (0, 0, 0, 0)
    assert not emulator.path_counts


def test_stop_closes_keepalive_connections():
    emu = BinanceEmulator(source=SimulatedSource(outage_rate=0.0), clock=lambda: NOW_MS).start()
    session = requests.Session()
    assert session.get(emu.url + "/api/v3/ping", timeout=5).status_code == 200
    url = emu.url
    emu.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(url + "/api/v3/ping", timeout=2)
    emu.stop()  # idempotent


def test_a_burst_of_connections_is_accepted_without_syn_drops(emulator):
    """A pool of download threads opens many connections at once; an exchange accepts them all. A listen
    backlog too short for that drops SYNs, and the client's connect then waits the kernel's 1 s retransmit."""
    import socket

    host, port = emulator.url.removeprefix("http://").split(":")
    socks = []
    try:
        for _ in range(48):
            s = socket.socket()
            s.settimeout(0.5)  # a dropped SYN is retried after 1 s: this connect would time out
            s.connect((host, int(port)))
            socks.append(s)
        assert len(socks) == 48
    finally:
        for s in socks:
            s.close()
    assert requests.get(emulator.url + "/api/v3/ping", timeout=5).status_code == 200
