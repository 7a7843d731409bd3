"""A tiny in-process event bus so long work can report progress without knowing who displays it.

Library code calls `emit(...)` after each unit of work (a partition written); the CLI subscribes a progress
bar. With no subscriber, emit costs a list iteration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Callable, Iterator


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    kind: str  # "partition_done" | "partition_failed" | "requests" | "waiting" (detail says for what)
    layer: str
    symbol: str | None = None
    day: str | None = None
    rows: int = 0
    detail: str | None = None


Listener = Callable[[ProgressEvent], None]
_listeners: list[Listener] = []
_lock = threading.Lock()
_emit_lock = threading.Lock()


def emit(event: ProgressEvent) -> None:
    with _emit_lock:  # work may finish on several threads; listeners see one event at a time
        for listener in list(_listeners):
            try:
                listener(event)
            except Exception:  # a broken display must never fail the work it displays
                pass


@contextlib.contextmanager
def subscribe(listener: Listener) -> Iterator[None]:
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)
