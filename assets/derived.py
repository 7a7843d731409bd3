"""The derived layers of the symbol x day partitions as one step: clean_bars (+ rejected_candles) -> indicators
-> signals, each behind its checks; scores (one table) is its own asset in assets/scores.py.

One step for the three layers: a range run reads its raw days once, computes each layer over the whole range
in one pass (one warm-up for indicators) and writes each day's file atomically through Storage, without
paying Dagster's per-step cost three times; each layer takes the one before from memory (glue.Handoff) while
that one's files are written. The step can run any subset of the layers (can_subset), in order;
each layer's checks run on the frames just computed, their outcome per day goes to the gate record
(lakehouse.gates), and when a blocking check fails the later layers are not computed and the step fails, as
separate steps would. A layer refuses, without retries, to read an upstream partition whose latest blocking
check failed in an earlier run: Dagster itself only stops the rest of the same run.
"""


from dagster import AssetExecutionContext, BackfillPolicy, multi_asset

from lakehouse.schema import CLEAN_BARS, INDICATORS, RAW_OHLCV, REJECTED_CANDLES, SIGNALS
from resources import ExchangeResource, LakehouseResource

from .clean_layer import CLEAN_CHECKS, build_clean, clean_range
from .glue import BLOCKING, DayWriter, Handoff, blocking_failed, exchange_id, gate, layer_spec
from .indicator_layer import INDICATOR_CHECKS, build_indicators, read_warmup_bars
from .partitions import days_by_symbol, symbol_day_partitions
from .scores import scores
from .signal_layer import SIGNAL_CHECKS, build_signals

# The step's name (what a run's step list and failure messages say).
DERIVED_STEP = "derived"


@multi_asset(
    name=DERIVED_STEP,
    specs=[
        layer_spec(CLEAN_BARS, "Cleaned 1m bars and their 5m/15m/1h/4h/1d resamples (candles used, complete flag); "
                               "grain: symbol x UTC day, every interval in one file.", [RAW_OHLCV]),
        layer_spec(REJECTED_CANDLES, "Raw rows refused by cleaning, kept as fetched with the reason; "
                                     "grain: symbol x UTC day.", [RAW_OHLCV]),
        layer_spec(INDICATORS, "SMA(20/50/200), EMA(9/21), RSI(14), MACD(12,26,9), Bollinger(20,2), ATR(14) per "
                               "interval, TA-Lib definitions, each day computed from a fixed 600-bar warm-up; "
                               "grain: symbol x UTC day.", [CLEAN_BARS]),
        layer_spec(SIGNALS, "Explainable rule-based signals (lakehouse.signals.RULES): timestamp, interval, rule, "
                            "direction and a readable reason with the values; only data up to each bar's close; "
                            "grain: symbol x UTC day.", [INDICATORS, CLEAN_BARS]),
    ],
    check_specs=[*CLEAN_CHECKS, *INDICATOR_CHECKS, *SIGNAL_CHECKS],
    partitions_def=symbol_day_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    can_subset=True,
)
def derived(context: AssetExecutionContext, exchange: ExchangeResource, lakehouse: LakehouseResource):
    storage = lakehouse.storage()
    ex = exchange_id(exchange)
    selected = {k.to_user_string() for k in context.selected_asset_keys}
    plan = days_by_symbol(context.partition_keys)
    handoff = Handoff()
    layers = [
        ({CLEAN_BARS, REJECTED_CANDLES}, lambda w: build_clean(context, storage, ex, plan, selected, w, handoff)),
        ({INDICATORS}, lambda w: build_indicators(context, storage, ex, plan, w, handoff)),
        ({SIGNALS}, lambda w: build_signals(context, storage, ex, plan, w, handoff)),
    ]
    # Each layer computes from the one before in memory while that one's files are still being written; a
    # layer's results (its materializations and checks) are yielded only once its files are on disk.
    queued: list[tuple[DayWriter, list]] = []  # layers whose files may still be landing, oldest first
    try:
        for names, build in layers:
            if not names & selected:
                continue
            writer = DayWriter()
            try:
                results = build(writer)
            except Exception:
                writer.close(cancel=True)
                yield from _landed(queued)  # the layers before stay recorded, as with a step per layer
                raise
            queued.append((writer, results))
            if blocking_failed(results):
                yield from _landed(queued)
                # Dagster fails the step for the failed blocking check; what comes after must not build on it.
                context.log.error(f"a blocking check of {', '.join(sorted(names))} failed: later layers not computed")
                return
            yield from _landed(queued, keep=1)
        yield from _landed(queued)
    finally:
        for writer, _results in queued:  # interrupted or failed: files not yet started are dropped
            writer.close(cancel=True)


def _landed(queued: list[tuple[DayWriter, list]], keep: int = 0):
    """The results of the oldest queued layers, each once its files are on disk (a failed write raises), until
    `keep` layers are left."""
    while len(queued) > keep:
        writer, results = queued[0]
        writer.close()
        queued.pop(0)
        yield from results


DERIVED_ASSETS = [derived, scores]

__all__ = ["BLOCKING", "DERIVED_ASSETS", "DERIVED_STEP", "clean_range", "derived", "exchange_id", "gate",
           "read_warmup_bars", "scores"]
