"""The gate between layers: the latest outcome of each data-quality check, per partition, kept in the lakehouse.

Dagster stops the downstream steps of a run whose blocking check failed, but a later run would happily read
that partition (and range runs record check results without a partition at all). So every asset records its
checks' outcomes here, day by day, and a derived asset refuses to read an upstream partition whose latest
blocking check failed. The audit reads the same record to classify such a partition as invalid.

One small JSON document per (layer, exchange, symbol) under {root}/_meta/checks/, written atomically under a
file lock (a conditional PUT on an object store), so concurrent runs of one symbol cannot lose each other's outcomes:

    {"days": {"2024-01-02": {"ohlc_sanity": {"passed": false, "blocking": true, "at": "...", "run_id": "..."}}}}

A partition with no record (written before checks existed) counts as not failed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from typing import Iterable, Mapping

from .errors import StorageError
from .storage import Storage
from .symbols import encode_symbol
from .timeutil import parse_day

CHECKS_DIR = "checks"
_EXCHANGE_RE = re.compile(r"^[A-Za-z0-9_]+$")


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    check: str
    passed: bool
    blocking: bool
    at: str  # UTC ISO time the outcome was recorded
    run_id: str | None = None


class Gates:
    """Record and query the latest check outcomes of each (layer, exchange, symbol, day)."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def _name(self, layer: str, exchange: str, symbol: str) -> str:
        if not _EXCHANGE_RE.match(exchange or ""):
            raise StorageError(f"invalid exchange id {exchange!r}: letters, digits and '_' only")
        self.storage._layer_dir(layer)  # refuses an unknown layer
        return f"{CHECKS_DIR}/{layer}/exchange={exchange}/symbol={encode_symbol(symbol)}.json"

    def _load(self, name: str, strict: bool = True) -> dict:
        return self._parse(name, self.storage.read_meta(name), strict)

    def _parse(self, name: str, body: bytes | None, strict: bool = True) -> dict:
        if body is None:
            return {"days": {}}
        try:
            doc = json.loads(body)
            if not isinstance(doc.get("days", {}), dict):
                raise ValueError("'days' is not an object")
        except (ValueError, AttributeError) as exc:
            # A damaged record must not open the gate silently: reads fail, the next write starts afresh.
            if strict:
                raise StorageError(
                    f"{self.storage.meta_path(name)} is damaged ({exc}); rematerialize the layer's partitions "
                    f"to rewrite it, or delete it to treat them as unchecked") from None
            return {"days": {}}
        doc.setdefault("days", {})
        return doc

    # writes ----------------------------------------------------------------------------------
    def record(
        self,
        layer: str,
        exchange: str,
        symbol: str,
        outcomes: Mapping[dt.date | str, Mapping[str, bool]],
        *,
        blocking: Iterable[str],
        run_id: str | None = None,
    ) -> None:
        """Record {day: {check: passed}} for many days at once (one locked read-modify-write)."""
        if not outcomes:
            return
        blocking = set(blocking)
        at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        name = self._name(layer, exchange, symbol)
        days = {parse_day(day).isoformat(): checks for day, checks in outcomes.items()}

        def change(body: bytes | None) -> bytes:
            doc = self._parse(name, body, strict=False)
            doc.update(layer=layer, exchange=exchange, symbol=symbol)
            for iso, checks in days.items():
                entry = doc["days"].setdefault(iso, {})
                for check, passed in checks.items():
                    entry[check] = {"passed": bool(passed), "blocking": check in blocking, "at": at, "run_id": run_id}
            doc["days"] = dict(sorted(doc["days"].items()))
            return json.dumps(doc, separators=(",", ":")).encode()

        # Locked (files) or conditional (objects): concurrent runs of one symbol cannot lose each other's outcomes.
        self.storage.update_meta(name, change)

    def record_check(
        self, layer: str, exchange: str, symbol: str, day: dt.date | str, check: str, passed: bool,
        *, blocking: bool = True, run_id: str | None = None,
    ) -> None:
        """Record one check's outcome for one partition."""
        self.record(layer, exchange, symbol, {day: {check: passed}}, blocking=[check] if blocking else [],
                    run_id=run_id)

    # reads -----------------------------------------------------------------------------------
    def outcomes(self, layer: str, exchange: str, symbol: str) -> dict[dt.date, dict[str, CheckOutcome]]:
        """Every recorded day of a (layer, exchange, symbol) with its checks' latest outcomes."""
        doc = self._load(self._name(layer, exchange, symbol))
        out = {}
        for day, checks in doc["days"].items():
            out[dt.date.fromisoformat(day)] = {
                c: CheckOutcome(c, bool(v.get("passed")), bool(v.get("blocking")), v.get("at", ""), v.get("run_id"))
                for c, v in checks.items()
            }
        return out

    def blocked_days(
        self, layer: str, exchange: str, symbol: str, start: dt.date | None = None, end: dt.date | None = None
    ) -> dict[dt.date, list[str]]:
        """{day: [failed blocking checks]} for the days in [start, end] whose latest blocking check failed."""
        out = {}
        for day, checks in self.outcomes(layer, exchange, symbol).items():
            if (start is not None and day < start) or (end is not None and day > end):
                continue
            failed = sorted(c for c, o in checks.items() if o.blocking and not o.passed)
            if failed:
                out[day] = failed
        return out

    def failed_blocking(self, layer: str, exchange: str, symbol: str, day: dt.date | str) -> list[str]:
        """Names of the blocking checks whose latest outcome for this partition failed ([] = the gate is open)."""
        d = parse_day(day)
        return self.blocked_days(layer, exchange, symbol, d, d).get(d, [])


__all__ = ["CHECKS_DIR", "CheckOutcome", "Gates"]
