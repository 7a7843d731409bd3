"""The symbols a lakehouse tracks, with the day each one's history starts; a small JSON file in the root."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import tempfile
from pathlib import Path

from .errors import ConfigError
from .symbols import validate_symbol

REGISTRY_FILE = "_meta/symbols.json"


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
        self.path = Path(root).expanduser().resolve() / REGISTRY_FILE

    def load(self) -> dict[str, TrackedSymbol]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ConfigError(f"{self.path} is not valid JSON ({exc}); fix or delete it") from None
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"symbols": [e.as_dict() for e in sorted(entries.values(), key=lambda e: e.symbol)]}, indent=2)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
        os.replace(tmp, self.path)

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
