"""Remote mode: launch work as partition backfills on a running Dagster deployment, wait with live progress, and
exit with the truth.

Exit codes: 0 every partition succeeded (or, with --no-wait, the launch was accepted); 1 some partitions failed;
2 bad input; 3 timed out waiting (the backfill keeps running); 4 the deployment is unreachable or refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import sys
import time
from typing import Callable

import click

from lakehouse.run_tags import BACKFILL_TAG, covered_partitions, describe_partitions, split_key

from .dagster_api import (
    Backfill,
    DagsterAPI,
    DeploymentRejected,
    DeploymentUnreachable,
    InvalidURL,
    RunInfo,
)
from .progress import ProgressDisplay, progress_interval_s

EXIT_FAILED = 1
EXIT_TIMEOUT = 3
EXIT_DEPLOYMENT = 4
DEFAULT_TIMEOUT = "60m"
RAW_ASSET = "raw_ohlcv"
CANDLES = "candles"
# How long polling may fail to reach the deployment before the CLI gives up (a webserver restart takes a while).
UNREACHABLE_GRACE_S = 30.0
MAX_URL_CHARS = 2000


class DeploymentFailure(click.ClickException):
    """The deployment is unreachable or refused the request: exit 4."""

    exit_code = EXIT_DEPLOYMENT


def deployment_failure(exc: Exception) -> DeploymentFailure:
    if isinstance(exc, DeploymentUnreachable):
        return DeploymentFailure(f"{exc}. Is the Dagster webserver running there? Check --url / DAGSTER_URL "
                                 f"(`lakehouse dev` serves http://127.0.0.1:3000).")
    return DeploymentFailure(str(exc))


# options -----------------------------------------------------------------------------------------------
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


class Duration(click.ParamType):
    """Seconds (`90`) or a duration (`90s`, `15m`, `1h30m`)."""

    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        m = _DURATION.match(str(value))
        if not m or not any(m.groups()):
            self.fail(f"{value!r} is not a duration; use seconds (90) or e.g. 90s, 15m, 1h30m", param, ctx)
        h, mins, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mins * 60 + s
        if seconds <= 0:
            self.fail(f"{value!r} must be more than zero", param, ctx)
        return seconds


def remote_options(func):
    """--url, --wait/--no-wait and --timeout, shared by every command that can work on a deployment."""
    func = click.option("--timeout", type=Duration(), default=None,
                        help=f"Stop after this long (seconds, or 90s, 15m, 1h); exit 3. In-process the run in progress "
                             f"is canceled (no default limit); with --url the backfill keeps running (default "
                             f"{DEFAULT_TIMEOUT}).")(func)
    func = click.option("--wait/--no-wait", default=None,
                        help="With --url: wait for the backfill with live progress (default), or exit 0 as soon "
                             "as the deployment accepted it.")(func)
    func = click.option("--url", envvar="DAGSTER_URL", default=None, metavar="http://HOST:PORT",
                        help="Launch on this running Dagster deployment (its webserver) as a partition backfill "
                             "instead of running in-process; default: env DAGSTER_URL.")(func)
    return func


def check_local_flags(url: str | None, wait: bool | None, timeout: float | None) -> None:
    from .common import UsageFailure

    if url:
        return
    if wait is not None:  # --timeout also bounds in-process work (cli/runner.py)
        flag = "--wait" if wait else "--no-wait"
        raise UsageFailure(f"{flag} applies to remote mode only; add --url http://HOST:PORT (or set DAGSTER_URL), "
                           f"or drop {flag} to run in-process")


def connect(url: str) -> DagsterAPI:
    from lakehouse.errors import shorten

    from .common import UsageFailure

    if len(url) > MAX_URL_CHARS:  # every later message would repeat it whole
        raise UsageFailure(f"--url {shorten(url)!r} is too long for a deployment's address; use http://HOST:PORT")
    try:
        return DagsterAPI(url)
    except InvalidURL as exc:
        raise UsageFailure(f"--url: {exc}") from None


def call(fn: Callable, *args, **kwargs):
    """Run one API call; an unreachable or refusing deployment becomes exit 4 with a message saying why."""
    try:
        return fn(*args, **kwargs)
    except (DeploymentUnreachable, DeploymentRejected) as exc:
        raise deployment_failure(exc) from None


# partitions ------------------------------------------------------------------------------------------
def partition_name(symbol: str, day: dt.date) -> str:
    """The deployment's key for a symbol x day partition (MultiPartitionKey's string form)."""
    return f"{day.isoformat()}|{symbol}"


# launching -------------------------------------------------------------------------------------------
def deployment_symbols(api: DagsterAPI) -> list[str]:
    """The symbols the deployment tracks (its `symbols` dynamic partitions), in its order."""
    return call(api.partition_keys_by_dimension, RAW_ASSET).get("symbol", [])


def remote_backfill(url: str, names: list[str], start: dt.date | None, end: dt.date | None, assets: list[str], *,
                    wait: bool | None, timeout_s: float | None, as_json: bool, echo=click.echo,
                    tags: dict[str, str] | None = None) -> None:
    """`lakehouse backfill --url`: one asset backfill of every symbol x day asked for, then `watch`."""
    from lakehouse.errors import UserInputError
    from lakehouse.timeutil import check_range, utc_today

    from .common import UsageFailure

    api = connect(url)
    tracked = deployment_symbols(api)
    names = names or tracked
    if not names:
        raise DeploymentFailure(f"the deployment at {api.url} tracks no symbols; add one there first "
                                f"(lakehouse symbols add BTC/USDT with its DAGSTER_HOME and LAKEHOUSE_ROOT)")
    unknown = [n for n in names if n not in tracked]
    if unknown:
        raise DeploymentFailure(f"the deployment at {api.url} does not track {', '.join(unknown)}; add them there "
                                f"(lakehouse symbols add {' '.join(unknown)} with its DAGSTER_HOME and "
                                f"LAKEHOUSE_ROOT) or leave them out of --symbols")
    today = utc_today()
    if end is not None and end > today:
        echo(f"--end {end} is in the future; ending today ({today}).")
        end = today
    end = end or today
    if start is None:
        # The symbols' start days live in the deployment's registry, which is not visible from here.
        start = min(today - dt.timedelta(days=1), end)
        echo(f"no --start: refreshing {start}..{end}; pass --start YYYY-MM-DD for older history.")
    try:
        check_range(start, end)
    except UserInputError as exc:
        raise UsageFailure(str(exc)) from None
    days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    keys = [partition_name(symbol, day) for symbol in names for day in days]
    echo(f"launching {len(names)} symbol(s) x {len(days)} day(s) x {len(assets)} asset(s) on {api.url}")
    backfill_id = call(api.launch_backfill, assets, keys, tags={"lakehouse/launched_by": "lakehouse backfill", **(tags or {})},
                       title=f"lakehouse backfill {start}..{end}")
    watch(api, [backfill_id], f"backfill {backfill_id}", wait=wait is not False,
          timeout_s=timeout_s or Duration().convert(DEFAULT_TIMEOUT, None, None), as_json=as_json)


# waiting -----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class FailedGroup:
    """Partitions that did not materialize, with the run they failed in and why."""

    backfill_id: str
    partitions: list[str]
    assets: list[str]
    run_id: str | None
    run_url: str | None
    errors: list[str]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def line(self) -> str:
        shown = ", ".join(f"{s} {d}" for s, d in (split_key(k) for k in self.partitions[:8]))
        more = f" and {len(self.partitions) - 8} more" if len(self.partitions) > 8 else ""
        where = f" in run {self.run_id} ({self.run_url})" if self.run_id else ""
        why = "; ".join(self.errors) or "not materialized"
        return f"FAILED {shown}{more} [{', '.join(self.assets)}]{where}: {why}"


@dataclasses.dataclass
class Outcome:
    status: str  # succeeded | failed | timeout | launched
    backfills: list[Backfill]
    links: dict[str, str]
    elapsed_s: float
    candles: int = 0
    failed: list[FailedGroup] = dataclasses.field(default_factory=list)

    def counts(self) -> dict:
        assets = [a for b in self.backfills for a in b.partitioned()]
        return {
            "partitions": sum(a.targeted for a in assets),
            "materialized": sum(a.materialized for a in assets),
            "failed": sum(a.failed for a in assets),
            "in_progress": sum(a.in_progress for a in assets),
        }

    def as_dict(self, url: str) -> dict:
        doc = {
            "status": self.status,
            "url": url,
            "backfills": [{"id": b.backfill_id, "url": self.links[b.backfill_id], "status": b.status,
                           "error": b.error} for b in self.backfills],
            "counts": self.counts(),
            "candles": self.candles,
            "failed": [g.as_dict() for g in self.failed],
            "elapsed_s": round(self.elapsed_s, 1),
        }
        if len(self.backfills) == 1:
            doc = {"backfill_id": self.backfills[0].backfill_id, "backfill_url": self.links[self.backfills[0].backfill_id],
                   **doc}
        return doc


class BackfillWatcher:
    """Polls backfills until they finish or time runs out, feeding a ProgressDisplay on the way."""

    def __init__(self, api: DagsterAPI, backfill_ids: list[str], display: ProgressDisplay | None,
                 poll_s: float, timeout_s: float, clock=time.monotonic, sleep=time.sleep):
        self.api = api
        self.ids = list(backfill_ids)
        self.display = display
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.sleep = sleep
        self.started = clock()
        self.backfills: dict[str, Backfill] = {}
        self.runs: dict[str, list[RunInfo]] = {}
        self.materialized: dict[str, set[tuple[str, str]]] = {}  # backfill id -> {(asset, partition)}
        self.candles_by_run: dict[str, int] = {}
        self._seen_finished: set[str] = set()
        self._unreachable_since: float | None = None

    def elapsed(self) -> float:
        return self.clock() - self.started

    def poll(self) -> bool:
        """One round over every backfill; True once all of them are finished."""
        for bid in self.ids:
            backfill = self.api.backfill(bid)
            runs = self.api.backfill_runs(bid)
            self.backfills[bid], self.runs[bid] = backfill, runs
            for run in runs:
                # A running run is asked again each round so candles grow live; a finished one is asked once.
                if run.run_id not in self._seen_finished and (run.finished or run.status == "STARTED"):
                    self._collect(bid, run)
        self._show()
        return all(b.finished for b in self.backfills.values())

    def _collect(self, bid: str, run: RunInfo) -> None:
        mats = self.api.run_materializations(run.run_id)
        done = self.materialized.setdefault(bid, set())
        done.update((m.asset, m.partition) for m in mats if m.partition)
        # Each day's materialization carries that day's candles: the run's figure is their sum, one per day.
        per_day = {m.partition: m.metadata.get(CANDLES, 0) for m in mats if m.asset == RAW_ASSET}
        self.candles_by_run[run.run_id] = int(sum(per_day.values()))
        if run.finished:
            self._seen_finished.add(run.run_id)

    def _show(self) -> None:
        if self.display is None:
            return
        assets = [a for b in self.backfills.values() for a in b.partitioned()]
        running = [r for runs in self.runs.values() for r in runs if r.status in ("STARTING", "STARTED")]
        queued = sum(1 for runs in self.runs.values() for r in runs if r.status in ("QUEUED", "NOT_STARTED"))
        notes = [d for d in (describe_partitions(r.tags) for r in running) if d]
        note = ", ".join(notes[:2]) + (f" +{len(notes) - 2}" if len(notes) > 2 else "")
        if queued:
            note = f"{note} ({queued} run(s) queued)".strip()
        waiting = self._waiting(running, [r for runs in self.runs.values() for r in runs
                                          if r.status in ("QUEUED", "NOT_STARTED")])
        if waiting:
            note = f"{note}; {waiting}".strip("; ")
        self.display.update(total=sum(a.targeted for a in assets), done=sum(a.materialized for a in assets),
                            failed=sum(a.failed for a in assets), running=sum(a.in_progress for a in assets),
                            rows=sum(self.candles_by_run.values()), note=note)

    def _waiting(self, running: list[RunInfo], queued: list[RunInfo]) -> str | None:
        """What our runs wait for: a started run for a pool slot, or a queued run for a pool that is full (the
        run queue holds back runs whose pools are), and which runs hold it."""
        from lakehouse.liveness import busy_in, run_label, waiting_in

        if not running and not queued:
            return None
        pools = self.api.pools()
        waiting = next((w for w in (waiting_in(pools, r.run_id) for r in running) if w is not None), None)
        if waiting is None and queued:
            needed = {p for ps in self.api.run_pools([r.run_id for r in queued]).values() for p in ps}
            waiting = busy_in([p for p in pools if p.pool in needed])
        if waiting is None:
            return None
        ids = [h.run_id for h in waiting.holders[:2]]
        holders = self.api.runs(limit=len(ids), run_ids=ids) if ids else []
        return waiting.text({r.run_id: run_label(r.tags, r.job or "") for r in holders})

    def wait(self) -> str:
        """'finished' or 'timeout'; raises DeploymentFailure when the deployment stays unreachable or refuses."""
        while True:
            try:
                if self.poll():
                    return "finished"
                self._unreachable_since = None
            except DeploymentUnreachable as exc:
                now = self.clock()
                self._unreachable_since = self._unreachable_since or now
                if now - self._unreachable_since >= UNREACHABLE_GRACE_S:
                    raise DeploymentFailure(
                        f"lost contact with the deployment for {UNREACHABLE_GRACE_S:.0f}s ({exc}); the backfill may "
                        f"still be running: {', '.join(self.api.backfill_link(b) for b in self.ids)}") from None
            except DeploymentRejected as exc:
                raise deployment_failure(exc) from None
            if self.elapsed() >= self.timeout_s:
                return "timeout"
            self.sleep(min(self.poll_s, max(0.0, self.timeout_s - self.elapsed())))

    def failed_groups(self) -> list[FailedGroup]:
        """Every partition a finished backfill did not materialize, grouped by the failed run that covered it."""
        groups: list[FailedGroup] = []
        symbol_order: list[str] | None = None
        for bid in self.ids:
            backfill = self.backfills.get(bid)
            if backfill is None or backfill.succeeded:
                continue
            missing: dict[str, set[str]] = {}  # partition -> assets
            done = self.materialized.get(bid, set())
            for counts in backfill.partitioned():
                if not counts.failed and backfill.status not in ("CANCELED", "FAILED"):
                    continue
                for key in self.api.targeted_partitions(bid, counts.asset):
                    if (counts.asset, key) not in done:
                        missing.setdefault(key, set()).add(counts.asset)
            failed_runs = [r for r in self.runs.get(bid, []) if r.status in ("FAILURE", "CANCELED")]
            if symbol_order is None and failed_runs:
                symbol_order = self.api.partition_keys_by_dimension(RAW_ASSET).get("symbol", [])
            left = dict(missing)
            for run in failed_runs:
                pairs = covered_partitions(run.tags, symbol_order or [])
                cover = None if pairs is None else {(s, d.isoformat()) for s, d in pairs}
                mine = sorted(k for k in left if cover is None or split_key(k) in cover)
                if not mine and cover is not None:
                    continue
                errors = self.api.run_errors(run.run_id) or [f"run {run.status.lower()}"]
                assets = sorted({a for k in mine for a in left[k]})
                groups.append(FailedGroup(bid, mine, assets, run.run_id, self.api.run_link(run.run_id), errors))
                for k in mine:
                    left.pop(k, None)
            if left:
                why = [backfill.error] if backfill.error else [f"backfill ended {backfill.status}"]
                groups.append(FailedGroup(bid, sorted(left), sorted({a for v in left.values() for a in v}),
                                          None, None, why))
        return groups


def _poll_s() -> float:
    return max(0.2, min(2.0, progress_interval_s()))


def watch(api: DagsterAPI, backfill_ids: list[str], label: str, *, wait: bool, timeout_s: float,
          as_json: bool) -> None:
    """Print each backfill's id and link, wait for them (unless --no-wait), report, and exit with the code."""
    echo = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    links = {bid: api.backfill_link(bid) for bid in backfill_ids}
    for bid in backfill_ids:
        echo(f"backfill {bid} launched on {api.url}: {links[bid]}")
    if call(api.daemon_healthy, "BACKFILL") is False:
        # Accepted is not started: without a backfill daemon the backfill stays REQUESTED, and waiting times out.
        click.echo("warning: the deployment's backfill daemon has no healthy heartbeat; nothing starts until "
                   "`dagster-daemon run` (or `lakehouse dev`) is running there", err=True)
    started = time.monotonic()
    if not wait:
        if as_json:
            backfills = [call(api.backfill, bid) for bid in backfill_ids]
            click.echo(json.dumps(Outcome("launched", backfills, links, time.monotonic() - started).as_dict(api.url),
                                  indent=2))
        echo(f"not waiting; follow it at {' '.join(links.values())} or with: lakehouse runs --url {api.url}")
        sys.exit(0)

    with ProgressDisplay(0, label, rows_label=CANDLES) as display:
        watcher = BackfillWatcher(api, backfill_ids, display, _poll_s(), timeout_s)
        state = watcher.wait()
    backfills = [watcher.backfills[b] for b in backfill_ids if b in watcher.backfills]
    outcome = Outcome("timeout", backfills, links, watcher.elapsed(), sum(watcher.candles_by_run.values()))
    if state == "finished":
        outcome.failed = call(watcher.failed_groups)
        outcome.status = "succeeded" if all(b.succeeded for b in backfills) and not outcome.failed else "failed"
    _report(api, outcome, as_json)
    sys.exit({"succeeded": 0, "failed": EXIT_FAILED, "timeout": EXIT_TIMEOUT}[outcome.status])


def _report(api: DagsterAPI, outcome: Outcome, as_json: bool) -> None:
    c = outcome.counts()
    if as_json:
        click.echo(json.dumps(outcome.as_dict(api.url), indent=2))
    say = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    ids = ", ".join(b.backfill_id for b in outcome.backfills)
    figures = (f"{c['materialized']}/{c['partitions']} asset partitions materialized, {c['failed']} failed, "
               f"{outcome.candles:,} candles fetched, in {outcome.elapsed_s:.0f}s")
    if outcome.status == "timeout":
        links = " ".join(outcome.links.values())
        click.echo(f"timed out after {outcome.elapsed_s:.0f}s waiting for backfill {ids} ({figures}); it keeps "
                   f"running on the deployment. Follow it at {links} or with: lakehouse runs --url {api.url}",
                   err=True)
        return
    say(f"backfill {ids} {outcome.status}: {figures}")
    for g in outcome.failed:
        click.echo(g.line(), err=True)
    if outcome.failed:
        click.echo("rerun only the failed partitions with: "
                   + "; ".join(f"lakehouse retry-failed {b} --url {api.url}"
                               for b in dict.fromkeys(g.backfill_id for g in outcome.failed)), err=True)


# runs ------------------------------------------------------------------------------------------------
FAILED_BACKFILL = {"COMPLETED_FAILED", "FAILED", "FAILING", "CANCELED"}
FAILED_RUN = {"FAILURE", "CANCELED"}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_row(run: RunInfo, error: str | None, link: str | None = None) -> dict:
    duration = (run.ended - run.started) if run.ended and run.started else None
    return {"kind": "run", "id": run.run_id, "status": run.status, "created": _iso(run.created),
            "duration_s": round(duration, 1) if duration is not None else None, "partitions": describe_partitions(run.tags) or "",
            "backfill_id": run.tags.get(BACKFILL_TAG), "error": error, "url": link}


def backfill_row(b: Backfill, link: str | None = None) -> dict:
    assets = b.partitioned()
    counts = {"partitions": sum(a.targeted for a in assets), "materialized": sum(a.materialized for a in assets),
              "failed": sum(a.failed for a in assets)} if assets else None
    duration = (b.ended - b.created) if b.ended and b.created else None
    return {"kind": "backfill", "id": b.backfill_id, "status": b.status, "created": _iso(b.created),
            "duration_s": round(duration, 1) if duration is not None else None, "title": b.title,
            "counts": counts, "error": b.error, "url": link}


def remote_rows(api: DagsterAPI, limit: int, failed_only: bool) -> list[dict]:
    backfills = [b for b in api.backfills(limit) if not failed_only or b.status in FAILED_BACKFILL]
    runs = api.runs(limit, statuses=sorted(FAILED_RUN) if failed_only else None)
    rows = [backfill_row(b, api.backfill_link(b.backfill_id)) for b in backfills]
    for r in runs:
        error = "; ".join(api.run_errors(r.run_id)) if r.status == "FAILURE" else None
        rows.append(run_row(r, error, api.run_link(r.run_id)))
    return newest_first(rows, limit)


def newest_first(rows: list[dict], limit: int) -> list[dict]:
    return sorted(rows, key=lambda r: r["created"] or "", reverse=True)[:limit]


def print_rows(rows: list[dict], failed_only: bool) -> None:
    if not rows:
        click.echo("no failed runs or backfills" if failed_only else "no runs or backfills yet")
        return
    for r in rows:
        took = f"{r['duration_s']:.0f}s" if r["duration_s"] is not None else "-"
        if r["kind"] == "backfill":
            c = r["counts"]
            what = (f"{c['materialized']}/{c['partitions']} materialized, {c['failed']} failed" if c else "") \
                + (f" {r['title']}" if r.get("title") else "")
        else:
            what = r["partitions"] + (f" (backfill {r['backfill_id']})" if r["backfill_id"] else "")
        line = f"{r['kind']:<8} {r['id'][:36]:<36} {r['status']:<17} {r['created'] or '-':<20} {took:>6}  {what}"
        click.echo(line.rstrip())
        if r.get("error"):
            click.echo(f"{'':<9}error: {r['error']}")
