"""Progress for long work: a live bar with counts and ETA in a terminal, a plain line every few seconds in logs."""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .common import user_stderr


PROGRESS_INTERVAL_ENV = "LAKEHOUSE_PROGRESS_INTERVAL_S"


def progress_interval_s(default: float = 5.0) -> float:
    """Seconds between plain progress lines when not in a terminal (CI logs); LAKEHOUSE_PROGRESS_INTERVAL_S."""
    raw = os.environ.get(PROGRESS_INTERVAL_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else default
    except ValueError:
        return default


class ProgressDisplay:
    """`with ProgressDisplay(total, "raw_ohlcv") as p: p.advance(ok=True, note="BTC/USDT 2024-01-02")`."""

    def __init__(self, total: int, label: str, *, stream=None, interval_s: float | None = None,
                 force_plain: bool | None = None, rows_label: str = "rows"):
        self.total = total
        self.label = label
        self.done = 0
        self.failed = 0
        self.running = 0
        self.rows = 0
        self.rows_label = rows_label
        self.note = ""
        self.stream = stream or user_stderr()
        self.interval_s = progress_interval_s() if interval_s is None else interval_s
        self.plain = (not self.stream.isatty()) if force_plain is None else force_plain
        self._started = time.monotonic()
        self._first_at: float | None = None  # when the first partition finished
        self._last_print = 0.0
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> "ProgressDisplay":
        if not self.plain:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=self.total, detail="")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
        else:
            self._print_line(force=True)

    def _detail(self) -> str:
        parts = [f"{self.failed} failed" if self.failed else "", f"{self.running} running" if self.running else "",
                 f"{self.rows:,} {self.rows_label}" if self.rows else "", self.note]
        return "  ".join(p for p in parts if p)

    def eta_s(self) -> float | None:
        """Seconds left at the pace since the first partition finished: the time before it (starting the run,
        loading markets, the first downloads) is paid once, so counting it would inflate every estimate."""
        finished = self.done + self.failed
        if self._first_at is None or finished < 2 or finished >= self.total:
            return None
        pace = (time.monotonic() - self._first_at) / (finished - 1)
        return pace * (self.total - finished)

    def _print_line(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_print < self.interval_s:
            return
        self._last_print = now
        eta = self.eta_s()
        eta_txt = f"ETA {eta:.0f}s" if eta is not None else "ETA -"
        running = f", {self.running} running" if self.running else ""
        print(
            f"{self.label}: {self.done + self.failed}/{self.total} done ({self.failed} failed{running}) "
            f"{self.rows:,} {self.rows_label}, elapsed {now - self._started:.0f}s, {eta_txt} {self.note}".rstrip(),
            file=self.stream, flush=True,
        )

    def update(self, *, done: int | None = None, failed: int | None = None, total: int | None = None,
               rows: int | None = None, note: str | None = None, running: int | None = None) -> None:
        """Set absolute figures (remote backfills report totals, not increments)."""
        if done is not None:
            self.done = done
        if failed is not None:
            self.failed = failed
        if running is not None:
            self.running = running
        if total is not None:
            self.total = total
        if rows is not None:
            self.rows = rows
        if note is not None:
            self.note = note
        self._refresh()

    def advance(self, *, ok: bool = True, rows: int = 0, note: str = "") -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.rows += rows
        self.note = note
        self._refresh()

    def _refresh(self) -> None:
        if self._first_at is None and self.done + self.failed:
            self._first_at = time.monotonic()
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done + self.failed, total=self.total, detail=self._detail())
        else:
            self._print_line()
