import datetime as dt
import threading

import pytest

from lakehouse.errors import StorageError
from lakehouse.gates import Gates

D = dt.date(2024, 1, 2)


def test_latest_blocking_outcome_decides(storage):
    gates = Gates(storage)
    assert gates.failed_blocking("clean_bars", "simulated", "BTC/USDT", D) == []  # never checked: open
    gates.record("clean_bars", "simulated", "BTC/USDT",
                 {D: {"ohlc_sanity": False, "unique_bars": True, "completeness": False}},
                 blocking={"ohlc_sanity", "unique_bars"}, run_id="r1")
    assert gates.failed_blocking("clean_bars", "simulated", "BTC/USDT", D) == ["ohlc_sanity"]  # WARN ignored
    assert gates.failed_blocking("clean_bars", "simulated", "BTC/USDT", "2024-01-03") == []
    assert gates.failed_blocking("clean_bars", "simulated", "ETH/USDT", D) == []
    outcome = gates.outcomes("clean_bars", "simulated", "BTC/USDT")[D]["ohlc_sanity"]
    assert (outcome.passed, outcome.blocking, outcome.run_id) == (False, True, "r1")

    gates.record_check("clean_bars", "simulated", "BTC/USDT", D, "ohlc_sanity", True, run_id="r2")
    assert gates.failed_blocking("clean_bars", "simulated", "BTC/USDT", D) == []
    assert set(gates.outcomes("clean_bars", "simulated", "BTC/USDT")[D]) == {"ohlc_sanity", "unique_bars", "completeness"}


def test_blocked_days_in_a_window(storage):
    gates = Gates(storage)
    days = [D + dt.timedelta(days=i) for i in range(5)]
    gates.record("indicators", "simulated", "BTC/USDT", {d: {"indicator_sanity": i != 2} for i, d in enumerate(days)},
                 blocking={"indicator_sanity"})
    assert gates.blocked_days("indicators", "simulated", "BTC/USDT") == {days[2]: ["indicator_sanity"]}
    assert gates.blocked_days("indicators", "simulated", "BTC/USDT", days[3], days[4]) == {}


def test_concurrent_writers_lose_nothing(storage):
    gates = Gates(storage)
    days = [D + dt.timedelta(days=i) for i in range(16)]

    def write(day):
        gates.record_check("signals", "simulated", "BTC/USDT", day, "signals_reference_bars", False)

    threads = [threading.Thread(target=write, args=(d,)) for d in days]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(gates.blocked_days("signals", "simulated", "BTC/USDT")) == days


def test_damaged_record_fails_loudly_and_is_replaced_by_the_next_write(storage):
    gates = Gates(storage)
    gates.record_check("clean_bars", "simulated", "BTC/USDT", D, "ohlc_sanity", False)
    storage.write_meta("checks/clean_bars/exchange=simulated/symbol=BTC-USDT.json", b"{not json")
    with pytest.raises(StorageError, match="is damaged"):
        gates.failed_blocking("clean_bars", "simulated", "BTC/USDT", D)
    gates.record_check("clean_bars", "simulated", "BTC/USDT", D, "ohlc_sanity", False)
    assert gates.failed_blocking("clean_bars", "simulated", "BTC/USDT", D) == ["ohlc_sanity"]


def test_refuses_unknown_layer_and_bad_exchange(storage):
    with pytest.raises(StorageError, match="unknown layer"):
        Gates(storage).failed_blocking("nope", "simulated", "BTC/USDT", D)
    with pytest.raises(StorageError, match="invalid exchange"):
        Gates(storage).failed_blocking("clean_bars", "../x", "BTC/USDT", D)
