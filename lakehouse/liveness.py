"""Is the process that started a run still alive? A stamp (host, pid, process start time) recorded at launch
answers it later from any process on the same host, without Dagster.

The start time guards against PID reuse: after a crash or a reboot the same pid may belong to another process.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Mapping

import psutil

HOST_TAG = "lakehouse/host"
PID_TAG = "lakehouse/pid"
PID_STARTED_TAG = "lakehouse/pid_started"
ALIVE, DEAD, ELSEWHERE = "alive", "dead", "elsewhere"
# psutil's create_time is rounded differently across calls and platforms; a reused pid starts much later.
START_TOLERANCE_S = 2.0


def this_host() -> str:
    return socket.gethostname()


@dataclasses.dataclass(frozen=True)
class ProcessStamp:
    host: str
    pid: int
    started: float  # epoch seconds the process was created

    @classmethod
    def current(cls) -> "ProcessStamp":
        return cls(this_host(), os.getpid(), psutil.Process().create_time())

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> "ProcessStamp | None":
        try:
            return cls(tags[HOST_TAG], int(tags[PID_TAG]), float(tags[PID_STARTED_TAG]))
        except (KeyError, ValueError):
            return None

    def as_tags(self) -> dict[str, str]:
        return {HOST_TAG: self.host, PID_TAG: str(self.pid), PID_STARTED_TAG: f"{self.started:.2f}"}

    def state(self) -> str:
        """ALIVE, DEAD (this host, the process is gone or its pid now belongs to another), or ELSEWHERE."""
        if self.host != this_host():
            return ELSEWHERE
        try:
            proc = psutil.Process(self.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return DEAD
            return ALIVE if abs(proc.create_time() - self.started) <= START_TOLERANCE_S else DEAD
        except psutil.NoSuchProcess:
            return DEAD
        except psutil.Error:  # e.g. access denied: it exists, so it is not ours to declare dead
            return ALIVE

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"
