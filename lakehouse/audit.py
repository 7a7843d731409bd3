"""The audit: classify every partition of every layer from the files themselves, and plan the runs that heal them.

For each tracked symbol and each UTC day from its start (never before its listing) to today, each layer's
partition is one of:

- missing     no data file (raw: only once the day has a closed minute to fetch);
- incomplete  raw: fewer 1m candles than the day's window holds, not explained by a confirmed source gap;
- stale       raw, the current day: its newest candle closed longer ago than LAKEHOUSE_STALE_LAG_MINUTES;
- invalid     the file is unreadable or malformed, or its latest blocking check failed (lakehouse.gates);
- outdated    derived layers: the upstream partition was rewritten after this one was built;
- ok.

A tick is cheap: one scandir + stat per file (Storage.stat_days) and only files whose (size, mtime_ns) changed
are re-read (lakehouse.manifest). Raw partitions that need work are re-fetched (with every derived layer in the
same run); derived partitions are only rebuilt from their upstream.

Convergence (the ledger, {root}/_meta/audit/ledger.json): every partition the plan requests is remembered with
the file's stat at request time and a fingerprint of what was wrong (e.g. the gap list). When the file changes
(the run landed) and the fingerprint is the same, the source gave the same answer: the attempt counts, and the
next one waits LAKEHOUSE_RETRY_DELAY_MINUTES, doubling up to LAKEHOUSE_RETRY_MAX_DELAY_MINUTES. After
LAKEHOUSE_GAP_CONFIRM_ATTEMPTS identical answers an incomplete day is recorded as a confirmed source gap
(and is ok from then on while its gaps stay the same); an invalid one is given up and left for a person. A run
that fails without writing is retried after the same growing delay.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import time
from typing import Iterable, Mapping, Sequence

from .config import Settings
from .errors import LakehouseError
from .manifest import ERROR, FIRST, GAPS, LAST, ROWS, Manifest
from .registry import TrackedSymbol
from .schema import LAYERS, RAW_OHLCV
from .storage import Storage
from .timeutil import DAY_MS, MINUTE_MS, ms_to_day, ms_to_iso

MISSING, INCOMPLETE, STALE, INVALID, OUTDATED, OK = "missing", "incomplete", "stale", "invalid", "outdated", "ok"
STATES = (MISSING, INCOMPLETE, STALE, INVALID, OUTDATED)
REFETCH, REBUILD = "refetch", "rebuild"

# Derived layer -> the layer it is built from, partition by partition. Only layers registered in
# schema.LAYERS (and, for the sensor, present in the Definitions) are audited, so derived layers are
# picked up as they land.
LAYER_UPSTREAM: dict[str, str] = {
    "clean_bars": RAW_OHLCV,
    "rejected_candles": RAW_OHLCV,  # written for every day, empty when nothing was rejected
    "indicators": "clean_bars",
    "signals": "indicators",
}

LEDGER = "audit/ledger.json"
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def audited_layers(available: Iterable[str] | None = None) -> list[str]:
    """raw_ohlcv, then each derived layer whose upstream is audited, upstream first."""
    allowed = None if available is None else set(available)

    def usable(layer: str) -> bool:
        return layer in LAYERS and (allowed is None or layer in allowed)

    layers = [RAW_OHLCV] if usable(RAW_OHLCV) else []
    grew = True
    while grew:
        grew = False
        for layer, upstream in LAYER_UPSTREAM.items():
            if layer not in layers and upstream in layers and usable(layer):
                layers.append(layer)
                grew = True
    return layers


def with_descendants(roots: Iterable[str], layers: Sequence[str]) -> tuple[str, ...]:
    """The roots plus every audited layer built from them, in upstream-first order."""
    picked = set(roots)
    for layer in layers:  # upstream-first, so one pass sees each parent before its children
        if LAYER_UPSTREAM.get(layer) in picked:
            picked.add(layer)
    return tuple(layer for layer in layers if layer in picked)


def retry_delay_ms(settings: Settings, attempt: int) -> int:
    """Wait after the n-th identical answer (or failed request): base, 2x base, 4x base ... up to the max."""
    if attempt <= 0:
        return 0
    minutes = min(settings.retry_delay_minutes * 2 ** (attempt - 1), settings.retry_max_delay_minutes)
    return int(minutes * MINUTE_MS)


def freshness_tier(last_candle_ms: int | None, now_ms: int, settings: Settings) -> str:
    """fresh / aging / stale by the age of the newest candle's close; 'empty' with no candle at all."""
    if last_candle_ms is None:
        return "empty"
    age_h = (now_ms - (last_candle_ms + MINUTE_MS)) / 3_600_000
    if age_h < settings.freshness_warn_hours:
        return "fresh"
    return "aging" if age_h < settings.freshness_fail_hours else "stale"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One partition that is not ok, and whether the plan may act on it now."""

    layer: str
    exchange: str
    symbol: str
    day: dt.date
    state: str
    detail: str
    in_flight: bool = False
    retry_at_ms: int | None = None  # backing off until then
    gave_up: bool = False
    blocked_by_upstream: bool = False

    @property
    def actionable(self) -> bool:
        return not (self.in_flight or self.retry_at_ms or self.gave_up or self.blocked_by_upstream)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["day"] = self.day.isoformat()
        d["retry_at"] = ms_to_iso(self.retry_at_ms)
        del d["retry_at_ms"]
        return d


@dataclasses.dataclass(frozen=True)
class Gap:
    start_ms: int
    end_ms: int
    confirmed: bool
    kind: str = "gap"  # gap | missing (no file) | unreadable
    checks: int = 0  # refetches that returned the same gap
    first_seen_ms: int | None = None
    last_checked_ms: int | None = None
    confirmed_ms: int | None = None

    @property
    def minutes(self) -> int:
        return (self.end_ms - self.start_ms) // MINUTE_MS

    def as_dict(self) -> dict:
        return {
            "start": ms_to_iso(self.start_ms), "end": ms_to_iso(self.end_ms), "minutes": self.minutes,
            "confirmed_at_source": self.confirmed, "kind": self.kind, "checks": self.checks,
            "first_seen": ms_to_iso(self.first_seen_ms), "last_checked": ms_to_iso(self.last_checked_ms),
            "confirmed_at": ms_to_iso(self.confirmed_ms),
        }


@dataclasses.dataclass
class Coverage:
    """What the raw layer holds for one symbol, for `lakehouse status` and the UI's freshness table."""

    symbol: str
    exchange: str
    start: dt.date
    first_ms: int | None = None
    last_ms: int | None = None
    days_expected: int = 0
    days_covered: int = 0  # days with at least one candle
    candles: int = 0
    expected_minutes: int = 0
    gaps: list[Gap] = dataclasses.field(default_factory=list)  # per-day pieces, oldest first

    @property
    def completeness_pct(self) -> float:
        return round(100.0 * min(self.candles, self.expected_minutes) / self.expected_minutes, 3) if self.expected_minutes else 100.0

    def merged_gaps(self) -> list[Gap]:
        """Day pieces joined across midnight when they touch and agree on confirmation and kind."""
        out: list[Gap] = []
        for g in self.gaps:
            if out and out[-1].end_ms == g.start_ms and out[-1].confirmed == g.confirmed and out[-1].kind == g.kind:
                p = out[-1]
                out[-1] = dataclasses.replace(
                    p, end_ms=g.end_ms, checks=max(p.checks, g.checks),
                    last_checked_ms=max(filter(None, (p.last_checked_ms, g.last_checked_ms)), default=None))
            else:
                out.append(g)
        return out


@dataclasses.dataclass(frozen=True)
class RepairRequest:
    """One run: a contiguous range of days of one symbol, re-fetched (raw and everything downstream) or rebuilt."""

    exchange: str
    symbol: str
    start: dt.date
    end: dt.date
    action: str  # refetch | rebuild
    layers: tuple[str, ...]
    reasons: tuple[tuple[str, int], ...]  # (state, partitions), in STATES order

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def reasons_text(self) -> str:
        return ", ".join(f"{n} {s}" for s, n in self.reasons)

    def day_list(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range(self.days)]

    def as_dict(self) -> dict:
        return {"symbol": self.symbol, "exchange": self.exchange, "start": str(self.start), "end": str(self.end),
                "days": self.days, "action": self.action, "layers": list(self.layers),
                "reasons": dict(self.reasons)}


class Ledger:
    """Requested partitions awaiting their outcome, and confirmed source gaps; one JSON document."""

    def __init__(self, storage: Storage):
        self.storage = storage
        body = storage.read_meta(LEDGER)
        doc = {}
        if body is not None:
            try:
                doc = json.loads(body)
            except ValueError:
                doc = {}  # losing it costs a few extra refetches, never wrong data
        self.pending: dict[str, dict] = dict(doc.get("pending") or {})
        self.confirmed: dict[str, dict] = dict(doc.get("confirmed") or {})
        self.dirty = False

    def save(self) -> None:
        if self.dirty:
            body = {"version": 1, "pending": dict(sorted(self.pending.items())),
                    "confirmed": dict(sorted(self.confirmed.items()))}
            self.storage.write_meta(LEDGER, json.dumps(body, indent=1).encode())
            self.dirty = False


def ledger_key(layer: str, exchange: str, symbol: str, day: str) -> str:
    return f"{layer}|{exchange}|{symbol}|{day}"


def _fmt_gaps(gaps: list) -> str:
    return ";".join(f"{s}-{e}" for s, e in gaps)


def gap_detail(gaps: list) -> str:
    """How an incomplete raw day is described, and fingerprinted when its gaps are confirmed at the source."""
    return "gaps " + _fmt_gaps(gaps)


def raw_day_gaps(entry: list, wstart: int, we: int, closed: bool) -> list[list[int]]:
    """[start_ms, end_ms) windows of the day's window [wstart, we) without a candle, from a manifest entry;
    a day still forming has no trailing gap (its newest minutes are judged by staleness instead)."""
    if not entry[ROWS] or entry[FIRST] is None:
        return [[wstart, we]] if closed and we > wstart else []
    gaps = [[wstart, entry[FIRST]]] if entry[FIRST] > wstart else []
    gaps.extend(entry[GAPS])
    if closed and entry[LAST] + MINUTE_MS < we:
        gaps.append([entry[LAST] + MINUTE_MS, we])
    return gaps


@dataclasses.dataclass
class Audit:
    """The outcome of one audit: findings, coverage per symbol, and the plan (see commit)."""

    now_ms: int
    wall_ms: int
    layers: list[str]
    settings: Settings
    findings: list[Finding]
    coverage: dict[str, Coverage]
    plan: list[RepairRequest]
    partitions: int
    confirmed_gaps: int
    notes: list[str]
    _ledger: Ledger
    _stats: dict[str, tuple[int, int] | None]  # ledger key -> stat of every not-ok partition
    unread: int = 0  # partitions whose changed file is still to be read (cold manifest, read budget spent)

    def counts(self) -> dict[str, int]:
        c = collections.Counter(f.state for f in self.findings)
        return {s: c.get(s, 0) for s in STATES}

    @property
    def in_flight(self) -> int:
        return sum(1 for f in self.findings if f.in_flight)

    @property
    def waiting(self) -> int:
        return sum(1 for f in self.findings if f.retry_at_ms and not f.in_flight)

    @property
    def gave_up(self) -> int:
        return sum(1 for f in self.findings if f.gave_up)

    def summary(self) -> str:
        """'2 missing, 1 stale, 0 invalid; 3 partitions in flight; 12 confirmed source gaps' and the rest."""
        c = self.counts()
        parts = [f"{c[MISSING]} missing, {c[INCOMPLETE]} incomplete, {c[STALE]} stale, {c[INVALID]} invalid, "
                 f"{c[OUTDATED]} outdated"]
        parts.append(f"{self.in_flight} partitions in flight")
        if self.waiting:
            parts.append(f"{self.waiting} waiting to retry")
        if self.gave_up:
            parts.append(f"{self.gave_up} invalid given up after {self.settings.gap_confirm_attempts} attempts")
        parts.append(f"{self.confirmed_gaps} confirmed source gaps")
        if self.unread:
            parts.append(f"{self.unread} partitions not audited yet (cold cache, continuing next tick)")
        symbols = len(self.coverage)
        return "; ".join(parts) + f" (audited {self.partitions} partitions of {symbols} symbol(s) x {len(self.layers)} layer(s))"

    def commit(self, requested: Sequence[RepairRequest] = ()) -> None:
        """Remember what was requested (so its outcome counts as an attempt) and persist the ledger."""
        ledger = self._ledger
        roots = {(r.symbol, d.isoformat()): r for r in requested for d in r.day_list()}
        for f in self.findings:
            r = roots.get((f.symbol, f.day.isoformat()))
            if r is None or not f.actionable or f.layer not in r.layers:
                continue
            if r.action == REBUILD and LAYER_UPSTREAM.get(f.layer) in r.layers:
                continue  # rebuilt because its upstream is: that one carries the attempt
            if r.action == REFETCH and f.layer != RAW_OHLCV:
                continue
            key = ledger_key(f.layer, f.exchange, f.symbol, f.day.isoformat())
            e = ledger.pending.get(key)
            if e is None or e.get("reason") != f.state or e.get("fp") != _fingerprint(f):
                e = {"reason": f.state, "fp": _fingerprint(f), "attempts": 0, "requests": 0,
                     "first_seen": self.wall_ms, "last_checked": None}
            e["requests"] = e.get("requests", 0) + 1
            e["requested"] = True
            e["requested_stat"] = list(self._stats.get(key)) if self._stats.get(key) else None
            e["requested_at"] = self.wall_ms
            ledger.pending[key] = e
            ledger.dirty = True
        ledger.save()


def _fingerprint(f: Finding) -> str:
    return f.detail


class Auditor:
    """Runs audits over one lakehouse; keeps no state between audits except through the files in _meta/."""

    def __init__(self, storage: Storage, settings: Settings, layers: Sequence[str] | None = None,
                 wall_clock=lambda: int(time.time() * 1000), read_budget_s: float | None = None):
        """`read_budget_s` bounds the time spent re-reading changed files in one audit (the sensor's tick
        must end well inside its timeout); partitions left unread are reported and audited next time."""
        self.storage = storage
        self.settings = settings
        self.layers = list(layers) if layers is not None else audited_layers()
        self.manifest = Manifest(storage)
        self.wall_clock = wall_clock
        self.read_budget_s = read_budget_s

    def run(
        self,
        tracked: Iterable[TrackedSymbol],
        now_ms: int,
        *,
        in_flight: Mapping[str, Iterable[dt.date | str]] | None = None,
        exchange: str | None = None,
        persist_cache: bool = True,
    ) -> Audit:
        """Classify every partition of every tracked symbol at `now_ms` (the exchange's clock).

        `in_flight`: symbol -> days some queued or running run already covers (never requested twice).
        `exchange`: audit only symbols tracked on this exchange (runs fetch from the configured one).
        """
        wall = self.wall_clock()
        deadline = None if self.read_budget_s is None else time.monotonic() + self.read_budget_s
        unread_before = self.manifest.unread
        ledger = Ledger(self.storage)
        s = self.settings
        flight = {sym: {d if isinstance(d, str) else d.isoformat() for d in days} for sym, days in (in_flight or {}).items()}
        findings: list[Finding] = []
        coverage: dict[str, Coverage] = {}
        notes: list[str] = []
        stats_by_key: dict[str, tuple[int, int] | None] = {}
        keep: set[str] = set()  # ledger keys still meaningful after this audit
        audited_prefixes: set[str] = set()
        plan: list[RepairRequest] = []
        partitions = 0
        confirmed_count = 0
        today = ms_to_day(now_ms)
        closed_end = (now_ms // MINUTE_MS) * MINUTE_MS
        lag_ms = int(s.stale_lag_minutes * MINUTE_MS)
        max_attempts = s.gap_confirm_attempts

        for entry in sorted(tracked, key=lambda e: e.symbol):
            if exchange is not None and entry.exchange != exchange:
                notes.append(f"{entry.symbol} is tracked on {entry.exchange}, not the configured {exchange}: skipped")
                continue
            ex, sym = entry.exchange, entry.symbol
            start = max(entry.start, entry.listing) if entry.listing else entry.start
            cov = Coverage(sym, ex, start)
            coverage[sym] = cov
            if start > today:
                continue
            first_ord, last_ord = start.toordinal(), today.toordinal()
            isos = [dt.date.fromordinal(o).isoformat() for o in range(first_ord, last_ord + 1)]
            listing_iso = entry.listing.isoformat() if entry.listing else None
            sym_flight = flight.get(sym, set())
            stats, summaries, blocked = {}, {}, {}
            for layer in self.layers:
                stats[layer] = self.storage.stat_days(layer, ex, sym)
                summaries[layer] = self.manifest.refresh(layer, ex, sym, stats[layer], persist=persist_cache,
                                                         deadline=deadline)
                blocked[layer] = self._blocked(layer, ex, sym, notes)
                audited_prefixes.add(f"{layer}|{ex}|{sym}|")
            partitions += len(isos) * len(self.layers)
            states: dict[str, dict[str, str]] = {layer: {} for layer in self.layers}  # non-ok states by day
            sym_findings: dict[str, dict[str, Finding]] = collections.defaultdict(dict)  # day -> layer -> finding

            # raw ------------------------------------------------------------------------------------
            raw_stats, raw_sum, raw_blocked = stats[RAW_OHLCV], summaries[RAW_OHLCV], blocked[RAW_OHLCV]
            for i, iso in enumerate(isos):
                ws = (first_ord + i - _EPOCH_ORDINAL) * DAY_MS
                we = min(ws + DAY_MS, closed_end)
                closed = we == ws + DAY_MS
                st = raw_stats.get(iso)
                cov.days_expected += 1
                state, detail, gaps = OK, "", []
                if st is None:
                    if we > ws:
                        state, detail = MISSING, "no file"
                        cov.expected_minutes += (we - ws) // MINUTE_MS
                        cov.gaps.append(Gap(ws, we, False, "missing"))
                elif (e := raw_sum.get(iso)) is None:
                    continue  # changed, not re-read yet (read budget spent): next audit
                else:
                    rows = e[ROWS] if e[FIRST] is not None else 0  # only misaligned rows: no minute covered
                    wstart = e[FIRST] if iso == listing_iso and rows else ws
                    expected = max(0, (we - wstart) // MINUTE_MS)
                    cov.expected_minutes += expected
                    cov.candles += rows
                    if rows:
                        cov.days_covered += 1
                        if cov.first_ms is None or e[FIRST] < cov.first_ms:
                            cov.first_ms = e[FIRST]
                        if cov.last_ms is None or e[LAST] > cov.last_ms:
                            cov.last_ms = e[LAST]
                    if e[ERROR]:
                        state, detail = INVALID, f"unreadable: {e[ERROR]}"
                        if we > wstart:
                            cov.gaps.append(Gap(wstart, we, False, "unreadable"))
                    elif iso in raw_blocked:
                        state, detail = INVALID, "failed blocking check(s): " + ", ".join(raw_blocked[iso])
                    else:
                        gaps = raw_day_gaps(e, wstart, we, closed)
                        newest_close = (e[LAST] + MINUTE_MS) if rows else wstart
                        if not closed and now_ms - newest_close > lag_ms:
                            state, detail = STALE, f"newest candle {ms_to_iso(e[LAST]) if rows else 'none'}"
                        elif gaps:
                            state, detail = INCOMPLETE, gap_detail(gaps)
                key = ledger_key(RAW_OHLCV, ex, sym, iso)
                if state == OK:
                    continue
                f, confirmed = self._step(ledger, key, state, detail, st, iso in sym_flight, wall, max_attempts,
                                          Finding(RAW_OHLCV, ex, sym, dt.date.fromordinal(first_ord + i), state, detail))
                if state in (INCOMPLETE, STALE):
                    c = ledger.confirmed.get(key) if confirmed else None
                    for g0, g1 in gaps:
                        if confirmed and state == INCOMPLETE:
                            cov.gaps.append(Gap(g0, g1, True, "gap", c.get("attempts", 0), c.get("first_seen"),
                                                c.get("last_checked"), c.get("confirmed_at")))
                        else:
                            p = ledger.pending.get(key) or {}
                            cov.gaps.append(Gap(g0, g1, False, "gap", p.get("attempts", 0), p.get("first_seen"),
                                                p.get("last_checked")))
                keep.add(key)
                if confirmed:
                    confirmed_count += 1
                    continue
                stats_by_key[key] = st
                states[RAW_OHLCV][iso] = state
                sym_findings[iso][RAW_OHLCV] = f
                findings.append(f)

            # derived --------------------------------------------------------------------------------
            for layer in self.layers[1:]:
                up = LAYER_UPSTREAM[layer]
                lst, lsum, lblocked, ust = stats[layer], summaries[layer], blocked[layer], stats[up]
                up_states = states[up]
                for i, iso in enumerate(isos):
                    st = lst.get(iso)
                    up_st = ust.get(iso)
                    if st is not None and iso not in lsum:
                        continue  # not re-read yet
                    if st is None:
                        if up_st is None and iso not in up_states:
                            continue  # nothing upstream yet either (e.g. the first minute of today)
                        state, detail = MISSING, "no file"
                    elif lsum[iso][ERROR]:
                        state, detail = INVALID, f"unreadable: {lsum[iso][ERROR]}"
                    elif iso in lblocked:
                        state, detail = INVALID, "failed blocking check(s): " + ", ".join(lblocked[iso])
                    elif up_st is not None and up_st[1] > st[1]:
                        state, detail = OUTDATED, f"{up} rewritten at {up_st[1]}"
                    else:
                        continue
                    key = ledger_key(layer, ex, sym, iso)
                    blocked_up = up_st is None or up_states.get(iso) in (MISSING, INVALID)
                    f, _ = self._step(ledger, key, state, detail, st, iso in sym_flight, wall, max_attempts,
                                      Finding(layer, ex, sym, dt.date.fromordinal(first_ord + i), state, detail,
                                              blocked_by_upstream=blocked_up))
                    keep.add(key)
                    stats_by_key[key] = st
                    states[layer][iso] = state
                    sym_findings[iso][layer] = f
                    findings.append(f)

            plan.extend(self._plan_symbol(ex, sym, sym_findings))

        # Ledger entries of audited partitions that are ok now are done with.
        for book in (ledger.pending, ledger.confirmed):
            for key in [k for k in book if k not in keep and k.rsplit("|", 1)[0] + "|" in audited_prefixes]:
                del book[key]
                ledger.dirty = True

        plan.sort(key=lambda r: (r.end != today, r.symbol, r.start))  # keep today fresh first
        findings.sort(key=lambda f: (f.symbol, f.day, self.layers.index(f.layer)))
        unread = self.manifest.unread - unread_before
        if unread:
            notes.append(f"{unread} changed partition file(s) not re-read yet (read budget of "
                         f"{self.read_budget_s:g}s spent); the next audit continues")
        return Audit(now_ms, wall, list(self.layers), s, findings, coverage, plan, partitions, confirmed_count,
                     notes, ledger, stats_by_key, unread)

    def _blocked(self, layer: str, exchange: str, symbol: str, notes: list[str]) -> dict[str, list[str]]:
        """{day: [failed blocking checks]} recorded by the assets (lakehouse.gates), if that module is present."""
        try:
            from .gates import Gates
        except ImportError:
            return {}
        try:
            return {d.isoformat(): checks for d, checks in Gates(self.storage).blocked_days(layer, exchange, symbol).items()}
        except LakehouseError as exc:
            notes.append(str(exc))
            return {}

    def _step(self, ledger: Ledger, key: str, state: str, detail: str, stat, in_flight: bool, wall: int,
              max_attempts: int, finding: Finding) -> tuple[Finding, bool]:
        """Apply what the ledger knows about this partition: landed attempts, backoff, confirmation."""
        c = ledger.confirmed.get(key)
        if state == INCOMPLETE and c is not None and c.get("fp") == detail:
            return finding, True
        e = ledger.pending.get(key)
        if e is not None:
            landed = e.get("requested") and (list(stat) if stat else None) != e.get("requested_stat")
            same = e.get("reason") == state and e.get("fp") == detail
            if landed and same:
                e["attempts"] = e.get("attempts", 0) + 1
                e["last_checked"] = wall
                e["requested"] = False
                ledger.dirty = True
            elif not same:
                del ledger.pending[key]  # something else is wrong now: start counting afresh
                ledger.dirty = True
                e = None
        if e is not None and e.get("attempts", 0) >= max_attempts and not e.get("requested"):
            if state == INCOMPLETE:
                ledger.confirmed[key] = {"fp": detail, "attempts": e["attempts"], "first_seen": e.get("first_seen"),
                                         "last_checked": e.get("last_checked"), "confirmed_at": wall}
                del ledger.pending[key]
                ledger.dirty = True
                return finding, True
            if state == INVALID:
                return dataclasses.replace(finding, in_flight=in_flight, gave_up=True), False
        retry_at = None
        if e is not None:
            # Computed from the current settings, so changing the delays applies to waits already under way.
            if e.get("requested"):  # asked for and nothing landed: the run failed or wrote nothing
                retry_at = (e.get("requested_at") or 0) + retry_delay_ms(self.settings, e.get("requests", 1))
            else:  # the source answered the same as before
                retry_at = (e.get("last_checked") or 0) + retry_delay_ms(self.settings, e.get("attempts", 0))
            if retry_at <= wall:
                retry_at = None
        return dataclasses.replace(finding, in_flight=in_flight, retry_at_ms=retry_at), False

    def _plan_symbol(self, exchange: str, symbol: str, by_day: dict[str, dict[str, Finding]]) -> list[RepairRequest]:
        """Contiguous days that need the same action on the same layers become one range run."""
        out: list[RepairRequest] = []
        cur = None  # [start, end, action, layers, Counter]
        for iso in sorted(by_day):
            found = by_day[iso]
            raw = found.get(RAW_OHLCV)
            if raw is not None and raw.actionable:
                action, layers, reasons = REFETCH, tuple(self.layers), [raw.state]
            elif raw is not None and raw.in_flight:
                continue
            else:
                roots = [f for layer, f in found.items() if layer != RAW_OHLCV and f.actionable
                         and not any(o.in_flight for o in found.values())]
                if not roots:
                    continue
                action, layers, reasons = REBUILD, with_descendants([f.layer for f in roots], self.layers), [f.state for f in roots]
            day = dt.date.fromisoformat(iso)
            if cur and cur[2] == action and cur[3] == layers and cur[1] + dt.timedelta(days=1) == day:
                cur[1] = day
                cur[4].update(reasons)
            else:
                if cur:
                    out.append(_request(exchange, symbol, cur))
                cur = [day, day, action, layers, collections.Counter(reasons)]
        if cur:
            out.append(_request(exchange, symbol, cur))
        return out


def _request(exchange: str, symbol: str, cur: list) -> RepairRequest:
    start, end, action, layers, counter = cur
    return RepairRequest(exchange, symbol, start, end, action, layers,
                         tuple((s, counter[s]) for s in STATES if counter.get(s)))
