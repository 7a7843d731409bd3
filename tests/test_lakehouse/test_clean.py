import datetime as dt
import itertools

import numpy as np
import polars as pl

from lakehouse.clean import REASONS, clean_candles
from lakehouse.exchange.simulated import SimulatedSource
from lakehouse.schema import LAYERS, RAW_SCHEMA, REJECTED_CANDLES
from lakehouse.timeutil import day_start_ms

T0 = dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)
NAN, INF = float("nan"), float("inf")


def at(minute, second=0):
    return T0 + dt.timedelta(minutes=minute, seconds=second)


def raw(*rows):
    """rows of (timestamp, open, high, low, close, volume, fetched_at minute)."""
    return pl.DataFrame(
        [
            {"timestamp": ts, "open": o, "high": h, "low": l, "close": c, "volume": v,
             "exchange": "simulated", "symbol": "BTC/USDT", "fetched_at": at(60 + f)}
            for ts, o, h, l, c, v, f in rows
        ],
        schema=RAW_SCHEMA,
    )


def simulated_raw(days=1):
    start = day_start_ms(T0.date())
    arr = SimulatedSource(outage_rate=0.0).candles("BTC/USDT", start, start + days * 86_400_000)
    return pl.DataFrame({
        "timestamp": pl.Series(arr[:, 0].astype(np.int64)).cast(pl.Datetime("ms", "UTC")),
        "open": arr[:, 1], "high": arr[:, 2], "low": arr[:, 3], "close": arr[:, 4], "volume": arr[:, 5],
    }).with_columns(exchange=pl.lit("simulated"), symbol=pl.lit("BTC/USDT"), fetched_at=pl.lit(at(2000)))


def test_clean_rows_pass_through_sorted():
    result = clean_candles(raw(
        (at(2), 10.0, 12.0, 9.0, 11.0, 5.0, 0),
        (at(0), 10.0, 11.0, 10.0, 10.5, 1.0, 0),
        (at(1), 10.5, 10.5, 10.0, 10.0, 0.0, 0),
    ))
    assert result.bars.to_dicts() == [
        {"timestamp": at(0), "open": 10.0, "high": 11.0, "low": 10.0, "close": 10.5, "volume": 1.0,
         "exchange": "simulated", "symbol": "BTC/USDT"},
        {"timestamp": at(1), "open": 10.5, "high": 10.5, "low": 10.0, "close": 10.0, "volume": 0.0,
         "exchange": "simulated", "symbol": "BTC/USDT"},
        {"timestamp": at(2), "open": 10.0, "high": 12.0, "low": 9.0, "close": 11.0, "volume": 5.0,
         "exchange": "simulated", "symbol": "BTC/USDT"},
    ]
    assert result.rejects.height == 0
    assert result.rejects.schema == pl.Schema(LAYERS[REJECTED_CANDLES])
    assert result.stats == {"raw_rows": 3, "clean_rows": 3, "rejected_rows": 0, **{r: 0 for r in REASONS}}


DIRTY = raw(
    (at(0), 10.0, 11.0, 9.0, 10.0, 1.0, 0),
    (at(1), 10.0, 11.0, 9.0, 10.5, 2.0, 0),
    (at(1), 10.0, 11.0, 9.0, 10.5, 2.0, 0),  # exact duplicate
    (at(2), 10.0, 11.0, 9.0, 10.0, 3.0, 0),  # fetched earlier: loses
    (at(2), 10.0, 11.5, 9.0, 11.2, 4.0, 5),  # fetched later: wins
    (at(3), 10.0, 9.0, 11.0, 10.0, 1.0, 0),  # high < low
    (at(4), 12.0, 11.0, 9.0, 10.0, 1.0, 0),  # open above high
    (at(5), 10.0, 11.0, 9.0, 8.0, 1.0, 0),  # close below low
    (at(6), 10.0, 11.0, 9.0, 10.0, -1.0, 0),  # negative volume
    (at(7, 30), 10.0, 11.0, 9.0, 10.0, 1.0, 0),  # not on the minute
    (at(8), 10.0, 11.0, 9.0, NAN, 1.0, 0),
    (at(9), 10.0, INF, 9.0, 10.0, 1.0, 0),
    (at(10), 10.0, 11.0, 9.0, 10.0, None, 0),
    (at(11), 10.0, 11.0, 9.0, NAN, 9.0, 9),  # invalid, though fetched last: the valid row wins
    (at(11), 10.0, 11.0, 9.0, 10.0, 1.0, 0),
)


def test_dirty_rows_end_in_rejects_with_their_reason():
    result = clean_candles(DIRTY)
    assert result.bars.select("timestamp", "close", "volume").rows() == [
        (at(0), 10.0, 1.0), (at(1), 10.5, 2.0), (at(2), 11.2, 4.0), (at(11), 10.0, 1.0),
    ]
    reasons = result.rejects.select("timestamp", "reason").rows()
    assert reasons == [
        (at(1), "duplicate"),
        (at(2), "conflicting_duplicate"),
        (at(3), "high_below_low"),
        (at(4), "open_outside_range"),
        (at(5), "close_outside_range"),
        (at(6), "negative_volume"),
        (at(7, 30), "misaligned_timestamp"),
        (at(8), "non_finite"),
        (at(9), "non_finite"),
        (at(10), "non_finite"),
        (at(11), "non_finite"),
    ]
    # A rejected NaN is kept as fetched, not turned into null.
    assert result.rejects.filter(pl.col("timestamp") == at(8)).get_column("close").is_nan().to_list() == [True]
    assert result.stats == {
        "raw_rows": 15, "clean_rows": 4, "rejected_rows": 11,
        "non_finite": 4, "misaligned_timestamp": 1, "high_below_low": 1, "open_outside_range": 1,
        "close_outside_range": 1, "negative_volume": 1, "duplicate": 1, "conflicting_duplicate": 1,
    }


def test_rejects_keep_the_raw_values():
    rejected = clean_candles(DIRTY).rejects.filter(pl.col("reason") == "conflicting_duplicate")
    assert rejected.row(0, named=True) == {
        "timestamp": at(2), "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.0, "volume": 3.0,
        "exchange": "simulated", "symbol": "BTC/USDT", "fetched_at": at(60), "reason": "conflicting_duplicate",
    }


def test_conflict_ties_break_by_volume_then_values():
    result = clean_candles(raw(
        (at(0), 10.0, 11.0, 9.0, 10.0, 3.0, 0),
        (at(0), 10.0, 11.0, 9.0, 10.8, 7.0, 0),  # same fetch time, most volume: wins
        (at(0), 10.0, 11.0, 9.0, 10.9, 5.0, 0),
        (at(1), 10.0, 11.0, 9.0, 10.1, 2.0, 0),
        (at(1), 10.0, 11.0, 9.0, 10.3, 2.0, 0),  # same fetch time and volume, larger close: wins
    ))
    assert result.bars.select("timestamp", "close").rows() == [(at(0), 10.8), (at(1), 10.3)]
    assert result.rejects.select("timestamp", "close", "reason").rows() == [
        (at(0), 10.9, "conflicting_duplicate"),
        (at(0), 10.0, "conflicting_duplicate"),
        (at(1), 10.1, "conflicting_duplicate"),
    ]


def test_result_does_not_depend_on_input_order():
    expected = clean_candles(DIRTY)
    for seed in range(5):
        shuffled = clean_candles(DIRTY.sample(fraction=1.0, shuffle=True, seed=seed))
        assert shuffled.bars.equals(expected.bars)
        assert shuffled.rejects.equals(expected.rejects)
        assert shuffled.stats == expected.stats


def test_every_raw_row_is_accounted_for_on_realistic_data():
    good = simulated_raw()
    dirty = pl.concat([
        good,
        good.slice(100, 50),  # refetched: exact duplicates
        good.slice(200, 20).with_columns(pl.col("close") * 1.0001, pl.col("high") * 1.01),  # conflicting
        good.slice(300, 5).with_columns(pl.col("volume") * -1),
        good.slice(400, 5).with_columns(pl.col("timestamp") + dt.timedelta(seconds=1)),
    ])
    result = clean_candles(dirty)
    assert result.bars.height + result.rejects.height == dirty.height
    assert result.stats["duplicate"] == 50 and result.stats["negative_volume"] == 5
    assert result.stats["misaligned_timestamp"] == 5
    assert result.stats["conflicting_duplicate"] == 20
    # Same fetch time and volume: the larger close (the altered copy) wins the conflict.
    assert result.bars.height == good.height
    winners = result.bars.join(good.slice(200, 20), on="timestamp", how="semi")
    assert (winners.get_column("close") > good.slice(200, 20).get_column("close")).all()
    assert sum(result.stats[r] for r in REASONS) == result.rejects.height


def test_reasons_follow_the_documented_priority():
    # high < low also puts open outside [low, high]: the first reason in the list wins.
    both = clean_candles(raw((at(0), 10.0, 9.0, 11.0, 10.0, -1.0, 0)))
    assert both.rejects.get_column("reason").to_list() == ["high_below_low"]
    misaligned_nan = clean_candles(raw((at(0, 1), NAN, 9.0, 11.0, 10.0, 1.0, 0)))
    assert misaligned_nan.rejects.get_column("reason").to_list() == ["non_finite"]


def test_empty_input():
    result = clean_candles(pl.DataFrame(schema=RAW_SCHEMA))
    assert result.bars.height == 0 and result.rejects.height == 0
    assert result.stats["raw_rows"] == 0


def test_all_duplicates_permutations_agree():
    rows = [
        (at(0), 10.0, 11.0, 9.0, 10.0, 3.0, 1),
        (at(0), 10.0, 11.0, 9.0, 10.0, 3.0, 2),
        (at(0), 10.0, 11.0, 9.0, 10.2, 3.0, 0),
    ]
    outcomes = {
        (clean_candles(raw(*p)).bars.rows()[0], tuple(clean_candles(raw(*p)).rejects.rows()))
        for p in itertools.permutations(rows)
    }
    assert len(outcomes) == 1
    (bar, rejects), = outcomes
    assert bar[4] == 10.0  # close of a row fetched last (minute 2)
    assert [r[-1] for r in rejects] == ["conflicting_duplicate", "duplicate"]
