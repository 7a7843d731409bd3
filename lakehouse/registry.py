"""The symbols a lakehouse tracks, with the day each one's history starts; a small JSON file in the root."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os

from .errors import ConfigError
from .storage import Storage
from .symbols import validate_symbol

REGISTRY_FILE = "symbols.json"


@dataclasses.dataclass(frozen=True)
class TrackedSymbol:
    symbol: str
    exchange: str
    start: dt.date  # first day of history to keep (never before the listing day)
    listing: dt.date | None
    added_at: str

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["start"] = self.start.isoformat()
        d["listing"] = self.listing.isoformat() if self.listing else None
        return d


class Registry:
    def __init__(self, root: str | os.PathLike):
        self.storage = Storage(root)

    def load(self) -> dict[str, TrackedSymbol]:
        body = self.storage.read_meta(REGISTRY_FILE)
        if body is None:
            return {}
        try:
            raw = json.loads(body)
        except ValueError as exc:
            path = self.storage.meta_path(REGISTRY_FILE)
            raise ConfigError(f"{path} is not valid JSON ({exc}); fix or delete it") from None
        out = {}
        for item in raw.get("symbols", []):
            out[item["symbol"]] = TrackedSymbol(
                symbol=item["symbol"],
                exchange=item["exchange"],
                start=dt.date.fromisoformat(item["start"]),
                listing=dt.date.fromisoformat(item["listing"]) if item.get("listing") else None,
                added_at=item.get("added_at", ""),
            )
        return out

    def _save(self, entries: dict[str, TrackedSymbol]) -> None:
        body = json.dumps({"symbols": [e.as_dict() for e in sorted(entries.values(), key=lambda e: e.symbol)]}, indent=2)
        self.storage.write_meta(REGISTRY_FILE, body.encode())

    def upsert(self, entry: TrackedSymbol) -> None:
        entries = self.load()
        entries[entry.symbol] = entry
        self._save(entries)

    def remove(self, symbol: str) -> bool:
        entries = self.load()
        found = entries.pop(validate_symbol(symbol), None) is not None
        if found:
            self._save(entries)
        return found

    def get(self, symbol: str) -> TrackedSymbol | None:
        return self.load().get(validate_symbol(symbol))
