"""One composite score per symbol from its latest indicators and recent signals, with its ingredients spelled out.

The score is a sum of points, each from one readable ingredient of the reference interval's latest bar:

    close vs SMA200          +/-30   the long trend
    EMA9 vs EMA21            +/-20   the short trend
    MACD histogram sign      +/-10   momentum
    RSI14 < 30 / > 70        +10/-10 stretched (oversold / overbought)
    active signals           +/-6 each, the latest firing of each rule within the last `recent_bars` bars

Five rules at most are active, so the sum stays within [-100, 100]. A missing indicator (too little history)
gives 0 points and says so.
"""

from __future__ import annotations

import polars as pl

from .schema import SCORES, conform, empty
from .signals import fmt_number
from .timeutil import ms_to_iso

REFERENCE_INTERVAL = "1h"
RECENT_BARS = 24
SIGNAL_POINTS = 6


def _sign(a: float | None, b: float | None) -> int:
    if a is None or b is None or a == b:
        return 0
    return 1 if a > b else -1


def _state_ingredients(row: dict) -> list[tuple[str, int]]:
    """(text, points) for each ingredient read from the latest bar alone."""
    out = []
    s = _sign(row["close"], row["sma_200"])
    out.append((f"close {'>' if s > 0 else '<' if s < 0 else '?'} SMA200", 30 * s))
    s = _sign(row["ema_9"], row["ema_21"])
    out.append((f"EMA9 {'>' if s > 0 else '<' if s < 0 else '?'} EMA21", 20 * s))
    s = _sign(row["macd_hist"], 0.0)
    out.append((f"MACD hist {'>' if s > 0 else '<' if s < 0 else '?'} 0", 10 * s))
    rsi = row["rsi_14"]
    if rsi is None:
        out.append(("RSI14 ?", 0))
    else:
        out.append((f"RSI14 {rsi:.1f}", 10 if rsi < 30 else -10 if rsi > 70 else 0))
    return out


def _trend(row: dict) -> str:
    long, short = _sign(row["close"], row["sma_200"]), _sign(row["ema_9"], row["ema_21"])
    if long > 0 and short > 0:
        return "up"
    if long < 0 and short < 0:
        return "down"
    return "flat"


def _active(signals: pl.DataFrame, exchange: str, symbol: str, since_ms: int) -> list[dict]:
    """The latest firing of each rule at or after since_ms, newest first."""
    mine = signals.filter(
        (pl.col("exchange") == exchange) & (pl.col("symbol") == symbol)
        & (pl.col("timestamp").cast(pl.Int64) >= since_ms)
    )
    latest = mine.sort("timestamp", "rule").group_by("rule", maintain_order=True).last()
    return latest.sort(["timestamp", "rule"], descending=[True, False]).to_dicts()


def _score_row(row: dict, since_ms: int, active: list[dict], interval: str) -> dict:
    ingredients = _state_ingredients(row)
    net = sum(int(s["direction"]) for s in active)
    ingredients.append((f"{len(active)} active signals net {net:+d}", SIGNAL_POINTS * net))
    score = max(-100, min(100, sum(p for _, p in ingredients)))
    text = "; ".join(f"{t} {p:+d}" for t, p in ingredients)
    if not row["warmup_ok"]:
        text += " (warm-up incomplete)"
    return {
        "exchange": row["exchange"],
        "symbol": row["symbol"],
        "interval": interval,
        "timestamp": row["timestamp"],
        "close": row["close"],
        "trend": _trend(row),
        "score": score,
        "active_signals": "; ".join(
            f"{s['rule']} {int(s['direction']):+d} at {ms_to_iso(int(s['_ms']))} ({s['reason']})" for s in active
        ),
        "ingredients": f"{text} = {score:+d} (close {fmt_number(row['close'])}, since {ms_to_iso(since_ms)})",
    }


def compute_scores(
    latest_indicators: pl.DataFrame,
    latest_signals: pl.DataFrame,
    interval: str = REFERENCE_INTERVAL,
    recent_bars: int = RECENT_BARS,
) -> pl.DataFrame:
    """The scores layer: per (exchange, symbol), the latest bar of `interval`, its trend, score and reasons.

    `latest_indicators` must hold at least the last `recent_bars` bars of `interval` per symbol; a signal is
    active if it fired on one of them.
    """
    ind = latest_indicators.filter(pl.col("interval") == interval).sort("exchange", "symbol", "timestamp")
    sig = latest_signals.filter(pl.col("interval") == interval).with_columns(
        pl.col("timestamp").cast(pl.Int64).alias("_ms")
    )
    rows = []
    for (_exchange, _symbol), bars in ind.group_by("exchange", "symbol", maintain_order=True):
        recent = bars.tail(recent_bars)
        since_ms = recent.get_column("timestamp").cast(pl.Int64).min()
        latest = recent.row(-1, named=True)
        rows.append(_score_row(latest, since_ms, _active(sig, latest["exchange"], latest["symbol"], since_ms),
                               interval))
    if not rows:
        return empty(SCORES)
    return conform(pl.DataFrame(rows), SCORES).sort("exchange", "symbol")
