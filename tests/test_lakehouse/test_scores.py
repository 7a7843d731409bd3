import datetime as dt

import polars as pl

from lakehouse.schema import INDICATOR_COLUMNS, INDICATORS, LAYERS, SCORES, SIGNALS
from lakehouse.scores import compute_scores
from lakehouse.signals import RULES

T0 = dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)


def at(hour):
    return T0 + dt.timedelta(hours=hour)


def indicators(rows, symbol="BTC/USDT", interval="1h"):
    return pl.DataFrame(
        [
            {"timestamp": at(i), "interval": interval, "exchange": "simulated", "symbol": symbol, "close": 1.0,
             **{c: None for c in INDICATOR_COLUMNS}, "warmup_ok": True, **row}
            for i, row in enumerate(rows)
        ],
        schema=LAYERS[INDICATORS],
    )


def signals(*rows, symbol="BTC/USDT", interval="1h"):
    """rows of (hour, rule, direction)."""
    return pl.DataFrame(
        [
            {"timestamp": at(h), "exchange": "simulated", "symbol": symbol, "interval": interval, "rule": rule,
             "direction": d, "reason": f"{rule} fired", "close": 1.0}
            for h, rule, d in rows
        ],
        schema=LAYERS[SIGNALS],
    )


BULL = {"close": 105.0, "sma_200": 100.0, "ema_9": 104.0, "ema_21": 103.0, "macd_hist": 0.5, "rsi_14": 75.0}


def test_score_literal():
    ind = indicators([{}, {}, BULL])
    sig = signals(
        (0, "rsi_30_70", -1),  # older than the last 2 bars: not active
        (1, "macd_signal_cross", -1),  # superseded by the later firing of the same rule
        (1, "ema_9_21_cross", 1),
        (2, "macd_signal_cross", 1),
    )
    out = compute_scores(ind, sig, interval="1h", recent_bars=2)
    assert out.schema == pl.Schema(LAYERS[SCORES])
    assert out.to_dicts() == [{
        "exchange": "simulated",
        "symbol": "BTC/USDT",
        "interval": "1h",
        "timestamp": at(2),
        "close": 105.0,
        "trend": "up",
        "score": 62,
        "active_signals": "macd_signal_cross +1 at 2024-01-02T02:00:00Z (macd_signal_cross fired); "
                          "ema_9_21_cross +1 at 2024-01-02T01:00:00Z (ema_9_21_cross fired)",
        "ingredients": "close > SMA200 +30; EMA9 > EMA21 +20; MACD hist > 0 +10; RSI14 75.0 -10; "
                       "2 active signals net +2 +12 = +62 (close 105.0, since 2024-01-02T01:00:00Z)",
    }]


def test_missing_indicators_count_zero_and_say_so():
    ind = indicators([{"close": 3.5, "rsi_14": 25.0, "warmup_ok": False}], symbol="ETH/USDT")
    out = compute_scores(ind, signals(symbol="ETH/USDT"))
    row = out.row(0, named=True)
    assert (row["trend"], row["score"], row["active_signals"]) == ("flat", 10, "")
    assert row["ingredients"] == (
        "close ? SMA200 +0; EMA9 ? EMA21 +0; MACD hist ? 0 +0; RSI14 25.0 +10; 0 active signals net +0 +0"
        " (warm-up incomplete) = +10 (close 3.5, since 2024-01-02T00:00:00Z)"
    )


def test_score_is_bounded_and_per_symbol():
    bull = indicators([{**BULL, "rsi_14": 25.0}], symbol="AAA/USDT")
    bear = indicators([{"close": 90.0, "sma_200": 100.0, "ema_9": 1.0, "ema_21": 2.0, "macd_hist": -1.0,
                        "rsi_14": 80.0}], symbol="BBB/USDT")
    sig = pl.concat([
        signals(*[(0, r.name, 1) for r in RULES], symbol="AAA/USDT"),
        signals(*[(0, r.name, -1) for r in RULES], symbol="BBB/USDT"),
    ])
    out = compute_scores(pl.concat([bear, bull]), sig)
    assert out.select("symbol", "trend", "score").rows() == [("AAA/USDT", "up", 100), ("BBB/USDT", "down", -100)]


def test_other_intervals_are_ignored():
    ind = pl.concat([indicators([BULL], interval="1h"), indicators([{"close": 1.0}], interval="5m")])
    sig = signals((0, "ema_9_21_cross", -1), interval="5m")
    out = compute_scores(ind, sig)
    assert out.select("interval", "close", "score").rows() == [("1h", 105.0, 50)]


def test_no_bars_no_scores():
    out = compute_scores(pl.DataFrame(schema=LAYERS[INDICATORS]), pl.DataFrame(schema=LAYERS[SIGNALS]))
    assert out.height == 0 and out.schema == pl.Schema(LAYERS[SCORES])
