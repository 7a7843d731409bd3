"""`lakehouse gaps` and `repair`: thin click commands over the audit (lakehouse.audit, lakehouse.status); `status`
is in cli/status.py.

Planning and execution are separate steps: `plan_repair`, then `execute_plan` runs the plan in-process (as the
repair sensor groups it into runs) or `launch_plan` launches it on a deployment (`lakehouse repair --url`).
"""

from __future__ import annotations

import json
import sys

import click

from lakehouse.audit import Audit, RepairRequest
from lakehouse.errors import UserInputError
from lakehouse.symbols import validate_symbol

from .common import UsageFailure, echo_for, get_instance, load_defs, settings
from .remote import DEFAULT_TIMEOUT, Duration, check_local_flags, connect, remote_options, watch


def _resources() -> dict:
    from definitions import build_resources

    return build_resources()


def _audit(layers=None) -> tuple[object, object, Audit]:
    """One audit as the sensor would run it now: (instance, defs, audit)."""
    from assets.instance_audit import audit_now

    s = settings()
    instance = get_instance()
    defs = load_defs()
    res = _resources()
    asset_graph = defs.get_repository_def().asset_graph
    audit, _ = audit_now(instance, res["lakehouse"], res["exchange"], asset_graph, s, layers=layers)
    return instance, defs, audit


def _reap_dead_runs() -> None:
    from assets.run_guard import reap

    for line in reap(get_instance(), "lakehouse repair").lines():
        click.echo(line, err=True)


def plan_repair(layers=None) -> tuple[object, object, Audit]:
    """Audit now; the plan is `audit.plan` (every range run the lakehouse needs, nothing in flight)."""
    return _audit(layers)


def execute_plan(instance, defs, audit: Audit, requests: list[RepairRequest], display=None,
                 timeout_s: float | None = None) -> list:
    """Run the plan in-process and synchronously, grouped into range runs as the repair sensor groups it (symbols
    needing the same days and layers share a run; a failed shared run is split by run_plan); returns
    cli.runner.RangeOutcome's."""
    from assets.partitions import SYMBOLS_PARTITION
    from lakehouse.run_tags import RANGE_END_TAG, RANGE_START_TAG
    from sensors.repair import group_tags, request_groups, selection_for

    from .runner import Guard, run_plan

    audit.commit(requests)  # so a refetch that returns the same gaps counts towards confirming them
    asset_graph = defs.get_repository_def().asset_graph
    outcomes = []
    with Guard(instance, "repair", timeout_s, display) as guard:  # one deadline and one Ctrl-C for the plan
        for group, group_requests in request_groups(requests, instance.get_dynamic_partitions(SYMBOLS_PARTITION)):
            keys, _checks = selection_for(group_requests[0], asset_graph)
            tags = {k: v for k, v in group_tags(group, group_requests, audit.summary(), "lakehouse repair").items()
                    if k not in (RANGE_START_TAG, RANGE_END_TAG)}  # run_plan sets the range
            days = {symbol: group_requests[0].day_list() for symbol in group.symbols}
            outcomes += run_plan(instance, defs, [k.to_user_string() for k in keys], days, display, tags=tags,
                                 guard=guard)
    return outcomes


def launch_plan(api, defs, audit: Audit, requests: list[RepairRequest]) -> list[str]:
    """Launch the plan on a deployment: one backfill per distinct action and asset selection (usually one), each
    with every partition that needs it. Returns the backfill ids."""
    from sensors.repair import reasons_tag, request_buckets, selection_for

    from .remote import call, partition_name

    asset_graph = defs.get_repository_def().asset_graph
    ids = []
    for bucket in request_buckets(requests):
        keys, _checks = selection_for(bucket[0], asset_graph)
        partitions = [partition_name(r.symbol, day) for r in bucket for day in r.day_list()]
        tags = {"lakehouse/launched_by": "lakehouse repair --url", "lakehouse/repair": bucket[0].action,
                "lakehouse/reasons": reasons_tag(bucket), "lakehouse/audit": audit.summary()[:250]}
        ids.append(call(api.launch_backfill, [k.to_user_string() for k in keys], partitions, tags=tags,
                        title=f"lakehouse repair: {len(partitions)} partition(s)"))
    # Only now: a launch the deployment refused must not count as an attempt in the audit's ledger.
    audit.commit(requests)
    return ids


# gaps --------------------------------------------------------------------------------------------
@click.command()
@click.argument("symbol")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def gaps(symbol, as_json):
    """List a symbol's gaps: start, end, minutes, and whether the source confirmed it has no candles there.

    A gap is confirmed after LAKEHOUSE_GAP_CONFIRM_ATTEMPTS refetches returned the same candles; "missing"
    and "unreadable" gaps are whole days without a usable file.

    \b
    Example:
        lakehouse gaps BTC/USDT --json
    """
    from lakehouse.status import gap_rows

    try:
        symbol = validate_symbol(symbol)
    except UserInputError as exc:
        raise UsageFailure(str(exc)) from None
    from .status import raw_audit

    audit, _runs = raw_audit(settings())
    if symbol not in audit.coverage:
        raise UsageFailure(f"{symbol} is not tracked; see 'lakehouse symbols list'")
    rows = gap_rows(audit, symbol)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"{symbol}: no gaps")
        return
    for g in rows:
        how = (f"confirmed at source ({g['checks']} refetches, last {g['last_checked']})" if g["confirmed_at_source"]
               else f"open ({g['kind']}" + (f", {g['checks']} identical refetches" if g["checks"] else "") + ")")
        click.echo(f"{g['start']}  {g['end']}  {g['minutes']:>6} min  {how}")
    total = sum(g["minutes"] for g in rows)
    click.echo(f"{len(rows)} gap(s), {total} minutes; {sum(1 for g in rows if g['confirmed_at_source'])} confirmed at source")


# repair ------------------------------------------------------------------------------------------
def _plan_lines(plan: list[RepairRequest]) -> list[str]:
    return [f"{r.action:<8} {r.symbol:<12} {r.start}..{r.end} ({r.days} day(s)): {r.reasons_text}; "
            f"{', '.join(r.layers)}" for r in plan]


@click.command()
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable plan (and outcome) at the end.")
@remote_options
def repair(dry_run, as_json, url, wait, timeout):
    """Audit now and run exactly what it finds: exit 0 only if every planned run succeeded.

    Raw partitions that are missing, incomplete, stale or invalid are re-fetched (with their derived layers);
    derived partitions that are missing, invalid or outdated are rebuilt from upstream. Partitions that a
    queued or running run already covers, or that wait for a retry, are left alone.

    In-process and synchronous by default. With --url (or DAGSTER_URL) the audit still runs here (against
    DAGSTER_HOME and LAKEHOUSE_ROOT, which must be the deployment's) and the plan is launched on the deployment
    as partition backfills, then waited for like `lakehouse backfill --url` (exit 0, 1, 3 or 4).

    \b
    Example:
        lakehouse repair --dry-run
        lakehouse repair --json
        lakehouse repair --url http://127.0.0.1:3000 --timeout 30m
    """
    from .progress import ProgressDisplay
    from .runner import exit_on_signals, run_counts, runs_text

    check_local_flags(url, wait, timeout)
    if not url:
        exit_on_signals()
    api = connect(url) if url else None
    if not dry_run and not url:
        _reap_dead_runs()  # a dead run's partitions are repairable now, and its slots free for this repair
    instance, defs, audit = plan_repair()
    plan = audit.plan
    echo = echo_for(as_json)
    doc = {"audit": audit.summary(), "counts": audit.counts(), "plan": [r.as_dict() for r in plan], "dry_run": dry_run}
    if not plan:
        echo(f"nothing to repair: {audit.summary()}")
    else:
        echo(f"{audit.summary()}\nplan: {len(plan)} run(s)")
        for line in _plan_lines(plan):
            echo(f"  {line}")
    if dry_run or not plan:
        if as_json:
            click.echo(json.dumps(doc, indent=2))
        return
    if api is not None:
        ids = launch_plan(api, defs, audit, plan)
        watch(api, ids, "repair", wait=wait is not False,
              timeout_s=timeout or Duration().convert(DEFAULT_TIMEOUT, None, None), as_json=as_json)
        return
    total = sum(r.days * len(r.layers) for r in plan)
    with ProgressDisplay(total, "repair") as display:
        outcomes = execute_plan(instance, defs, audit, plan, display, timeout_s=timeout)
    failed = [o for o in outcomes if o.counts_as_failed]
    counts = run_counts(outcomes)
    doc.update(runs=[o.as_dict() for o in outcomes], failed_runs=counts["failed_runs"],
               split_runs=counts["split_runs"], succeeded=not failed)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(runs_text(counts))
        for o in failed:
            click.echo(f"FAILED {o.symbol} {o.start}..{o.end} (run {o.run_id}): {o.error}", err=True)
    sys.exit(1 if failed else 0)
