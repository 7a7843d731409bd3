"""What a `lakehouse serve` or `lakehouse dev` killed with SIGKILL left running, found and stopped by the next one.

Both start Dagster processes (webserver, daemon, code servers, workers) that outlive them: a second daemon would
launch every run twice and the old webserver would hold the port. Each records itself (pid and start time) and
the process groups of what it started in a small file under DAGSTER_HOME. The next one refuses to start while the
recorded one lives (exit 2), and otherwise stops the processes of those groups that carry this DAGSTER_HOME in
their environment: a group id reused since by something else is left alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click


def record(path: Path, groups: list[int]) -> None:
    """Write (atomically) this process's stamp and the process groups it is responsible for."""
    from lakehouse.liveness import ProcessStamp

    me = ProcessStamp.current()
    body = json.dumps({"by": {"host": me.host, "pid": me.pid, "started": me.started}, "groups": groups})
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(body)
    os.replace(tmp, path)  # the next command reads this record or the previous one, never half of it


def stop_leftovers(path: Path, home: Path, command: str, grace_s: float) -> set[int]:
    """Stop what the `command` recorded in `path` left running, and return their pids; exit 2 while it runs."""
    import psutil

    from lakehouse.liveness import ALIVE, ProcessStamp, stop_processes

    from .common import UsageFailure

    try:
        doc = json.loads(path.read_text())
        previous = ProcessStamp(str(doc["by"]["host"]), int(doc["by"]["pid"]), float(doc["by"]["started"]))
        groups = {int(g) for g in doc["groups"]}
    except FileNotFoundError:
        return set()
    except (ValueError, KeyError, TypeError):  # damaged: nothing in it can be trusted to signal
        path.unlink(missing_ok=True)
        return set()
    if previous.state() == ALIVE:
        raise UsageFailure(f"another lakehouse {command} ({previous}) is running with DAGSTER_HOME={home}; stop "
                           f"it first (Ctrl-C in its terminal, or kill {previous.pid})")
    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}  # this command and what started it

    def left_by_it(proc: psutil.Process) -> bool:
        try:
            return (proc.pid not in spared and os.getpgid(proc.pid) in groups
                    and proc.environ().get("DAGSTER_HOME") == str(home))
        except (OSError, psutil.Error):
            return False

    left = [p for p in psutil.process_iter() if left_by_it(p)]
    if left:
        click.echo(f"the previous lakehouse {command} ({previous}) ended without stopping its processes: "
                   f"stopping the {len(left)} it left (pids {', '.join(str(p.pid) for p in left)})")
        stop_processes(left, grace_s)
    path.unlink(missing_ok=True)
    return {p.pid for p in left}
