"""Per-symbol freshness of raw_ohlcv in the UI: Dagster's freshness policy judges the whole asset, this each symbol.

The repair sensor records this check's result (without a run) whenever the table changes and every 10
minutes; running the check by hand in the UI computes the same table.
"""


import json

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    MetadataValue,
    asset_check,
)

from lakehouse.audit import Audit
from lakehouse.schema import RAW_OHLCV
from lakehouse.status import markdown_table, symbol_rows, tier_counts
from resources import ExchangeResource, LakehouseResource
from assets.instance_audit import SYMBOL_FRESHNESS_CHECK, audit_now, last_runs_by_symbol


def _outcome(audit: Audit, last_runs: dict) -> tuple[bool, AssetCheckSeverity, dict, str]:
    rows = symbol_rows(audit, last_runs)
    tiers = tier_counts(rows)
    s = audit.settings
    metadata = {
        "symbols": MetadataValue.md(markdown_table(rows) if rows else "no symbols tracked"),
        # The same per symbol as data: the freshness notification sensor compares it with what it saw last.
        "freshness_by_symbol": MetadataValue.json({r["symbol"]: {"tier": r["freshness"], "last_candle": r["last_candle"],
                                                                 "age_minutes": r["age_minutes"]} for r in rows}),
        **{f"{tier}_symbols": n for tier, n in tiers.items()},
        "fresh_below_hours": s.freshness_warn_hours,
        "stale_above_hours": s.freshness_fail_hours,
        "audit": audit.summary(),
    }
    passed = tiers["aging"] + tiers["stale"] + tiers["empty"] == 0
    severity = AssetCheckSeverity.ERROR if tiers["stale"] + tiers["empty"] else AssetCheckSeverity.WARN
    # Ages move every minute; what is worth a new event is a change of tier, coverage, gaps or last run.
    digest = json.dumps([(r["symbol"], r["freshness"], r["completeness_pct"], r["open_gaps"], r["confirmed_gaps"],
                          (r["last_run"] or {}).get("status")) for r in rows])
    return passed, severity, metadata, digest


def freshness_evaluation(audit: Audit, last_runs: dict) -> tuple[AssetCheckEvaluation, str]:
    passed, severity, metadata, digest = _outcome(audit, last_runs)
    evaluation = AssetCheckEvaluation(asset_key=AssetKey(RAW_OHLCV), check_name=SYMBOL_FRESHNESS_CHECK,
                                      passed=passed, severity=severity, metadata=metadata, blocking=False)
    return evaluation, digest


@asset_check(
    asset=RAW_OHLCV,
    name=SYMBOL_FRESHNESS_CHECK,
    blocking=False,
    description="Every tracked symbol's newest candle is younger than LAKEHOUSE_FRESHNESS_WARN_HOURS; the "
                "metadata is a table of last candle, age, tier, completeness and gaps per symbol.",
)
def symbol_freshness(
    context: AssetCheckExecutionContext, lakehouse: LakehouseResource, exchange: ExchangeResource
) -> AssetCheckResult:
    audit, _ = audit_now(context.instance, lakehouse, exchange, None, layers=[RAW_OHLCV])
    passed, severity, metadata, _ = _outcome(audit, last_runs_by_symbol(context.instance))
    return AssetCheckResult(passed=passed, severity=severity, metadata=metadata)
