"""`lakehouse serve`: the Dagster webserver, the daemon and N Celery workers of one deployment, in the foreground.

Every process gets the same settings (LAKEHOUSE_ROOT, LAKEHOUSE_POSTGRES_URL, LAKEHOUSE_CELERY_BROKER_URL, ...)
and the generated instance config under DAGSTER_HOME. Ctrl-C or SIGTERM stops every child (their whole process
groups: the webserver's code server, the daemon's, the workers' pool processes), SIGKILL after a grace period.
Only click and the standard library at module top: `lakehouse --help` stays fast.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import click

from . import leftovers

STOP_GRACE_S = 20.0
# In DAGSTER_HOME while serve runs: its own process and its children's process groups, so that the next serve
# can stop what a serve killed with SIGKILL left running (a second daemon, a webserver holding the port).
STATE_FILE = "lakehouse-serve.json"
READY_TIMEOUT_S = 120.0
MAX_WORKER_RESTARTS = 10
# Dagster 1.13 has no setting for its daemons' loop (30 s between backfill ticks): LAKEHOUSE_DAEMON_INTERVAL_S
# runs the same `dagster-daemon` with that module constant set, for backfills that advance faster.
DAEMON_WITH_INTERVAL = (
    "import sys, dagster._daemon.controller as c; c.DEFAULT_DAEMON_INTERVAL_SECONDS = {interval}; "
    "from dagster._daemon.cli import main; sys.argv[0] = 'dagster-daemon'; sys.exit(main())"
)


def _bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def _reachable(url: str, default_port: int) -> str | None:
    """None when a TCP connection to the URL's host:port succeeds, else why not."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as exc:
        return f"{host}:{port} ({exc.strerror or exc})"


def preflight(s) -> list[str]:
    """Problems that would make the deployment fail later, found now (each names the setting to fix)."""
    problems = []
    if s.postgres_url and (why := _reachable(s.postgres_url, 5432)):
        problems.append(f"LAKEHOUSE_POSTGRES_URL: cannot reach PostgreSQL at {why}")
    if s.celery_broker_url:
        port = 6379 if s.celery_broker_url.startswith("redis") else 5672
        if why := _reachable(s.celery_broker_url, port):
            problems.append(f"LAKEHOUSE_CELERY_BROKER_URL: cannot reach the broker at {why}")
    if s.root.startswith("s3://"):
        from lakehouse.errors import StorageError
        from lakehouse.storage import Storage

        try:
            Storage(s.root).check()
        except StorageError as exc:
            problems.append(f"LAKEHOUSE_ROOT: {exc}")
    return problems


class Children:
    """The processes serve started, each in its own process group so stopping one stops its descendants."""

    def __init__(self, env: dict[str, str], cwd: str, state: Path):
        self.env, self.cwd, self.state = env, cwd, state  # state: the record the next serve reads (STATE_FILE)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.argv: dict[str, list[str]] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(argv, env=self.env, cwd=self.cwd, start_new_session=True)
        self.procs.append((name, proc))
        self.argv[name] = argv
        self._record()
        click.echo(f"started {name} (pid {proc.pid})")
        return proc

    def restart(self, name: str) -> None:
        i = next(i for i, (n, _) in enumerate(self.procs) if n == name)
        old = self.procs[i][1]
        self._signal(old, signal.SIGKILL)  # what is left of its group
        proc = subprocess.Popen(self.argv[name], env=self.env, cwd=self.cwd, start_new_session=True)
        self.procs[i] = (name, proc)
        self._record()
        click.echo(f"restarted {name} (pid {proc.pid}; was {old.pid}, exit code {old.returncode})", err=True)

    def _record(self) -> None:
        leftovers.record(self.state, [proc.pid for _, proc in self.procs])

    def forget(self) -> None:
        """Every child has stopped: nothing for the next serve to clean up."""
        self.state.unlink(missing_ok=True)

    def exited(self) -> tuple[str, int] | None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def group_pids(self) -> set[int]:
        """Every live process in the children's process groups (run workers included), from /proc."""
        groups = {proc.pid for _, proc in self.procs}
        pids = set()
        try:
            entries = os.listdir("/proc")
        except OSError:
            return pids
        for entry in entries:
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        fields = fh.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) in groups:  # fields after "(comm)": state, ppid, pgrp, ...
                    pids.add(int(entry))
        return pids

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                click.echo(f"{name} (pid {proc.pid}) did not stop in {STOP_GRACE_S:.0f}s: killing it", err=True)
            self._signal(proc, signal.SIGKILL)  # whatever of its group is left (e.g. an orphaned code server)
            proc.wait()
        click.echo("stopped " + ", ".join(f"{n} (pid {p.pid})" for n, p in self.procs))

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # the group we created for this child: never anything else
        except (ProcessLookupError, PermissionError):
            pass


def fail_interrupted_runs(pids: set[int]) -> None:
    """Mark failed the runs whose process was one of ours and is now gone, and free their pool slots.

    A run's process is a child of the daemon's (or webserver's) code server; stopping serve ends it, often
    before it can record anything, and Dagster's run monitoring cannot check such processes. Left alone the
    run would stay STARTED, its backfill would never finish and its `exchange` slot would stay taken.
    Reported as a failure, `run_retries` reruns it on the next start.
    """
    if not pids:
        return
    from dagster import DagsterEvent, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

    with DagsterInstance.get() as instance:
        active = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING,
                                                        DagsterRunStatus.CANCELING]))
        for run in active:
            records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ENGINE_EVENT).records
            run_pid = None
            for record in records:
                entry = record.event_log_entry
                if (entry.message or "").startswith("Started process for run"):
                    meta = entry.dagster_event.engine_event_data.metadata if entry.dagster_event else {}
                    value = getattr(meta.get("pid"), "value", meta.get("pid"))
                    run_pid = int(value) if str(value).isdigit() else None
            if run_pid not in pids:
                continue
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            if _all_steps_done(instance, run):
                # Its steps finished on the workers (a worker finishes its step before it stops); only the
                # run's own process ended early. Failing it would fail its backfill: nothing is left to retry.
                instance.report_dagster_event(
                    DagsterEvent(event_type_value=DagsterEventType.RUN_SUCCESS.value, job_name=run.job_name,
                                 message="every step had finished when lakehouse serve stopped the run's process"),
                    run_id=run.run_id)
                click.echo(f"run {run.run_id}: every step had finished before the stop: marked succeeded")
            else:
                instance.report_run_failed(
                    run, f"lakehouse serve stopped while this run was in progress (its process {run_pid} ended)")
                click.echo(f"run {run.run_id} was interrupted by the stop: marked failed (run_retries reruns it)")


def free_leftovers(when: str) -> None:
    """Fail runs whose process is gone and free the pool slots finished runs still hold (assets/run_guard.reap).

    A stop often ends a run's process right after its step claimed the `exchange` slot: the run records its own
    failure, but the slot stays claimed, and every run after it would wait for run monitoring to notice (up to
    a minute: free_slots_after_run_end_seconds plus its poll). Called after a stop and before a start, when
    none of this serve's processes is running.
    """
    from dagster import DagsterInstance

    from assets.run_guard import reap

    with DagsterInstance.get() as instance:
        for line in reap(instance, f"lakehouse serve ({when})").lines():
            click.echo(line)


def _all_steps_done(instance, run) -> bool:
    """Whether every step of the run's plan succeeded or was skipped."""
    from dagster import DagsterEventType

    if not run.execution_plan_snapshot_id:
        return False
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    wanted = set(plan.step_keys_to_execute or [step.key for step in plan.steps])
    done = set()
    for kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_SKIPPED):
        done |= {r.event_log_entry.step_key for r in instance.get_records_for_run(run.run_id, of_type=kind).records}
    return bool(wanted) and wanted <= done


def _wait_ready(host: str, port: int, children: Children, stopping) -> bool:
    import urllib.request

    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/server_info"
    started = time.monotonic()
    last_note = 0.0
    while time.monotonic() - started < READY_TIMEOUT_S:
        if children.exited() or stopping():
            return False
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            pass
        if time.monotonic() - last_note > 10:
            click.echo(f"waiting for the webserver to load the code location ({time.monotonic() - started:.0f}s)")
            last_note = time.monotonic()
        time.sleep(0.5)
    return False


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the webserver listens on.")
@click.option("--port", default=3000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=None, type=click.IntRange(0, 64),
              help="Celery workers to start here (one step at a time each); needs LAKEHOUSE_CELERY_BROKER_URL. "
                   "Default 2 with a broker, else 0 (steps run in the run's process). 0 with a broker: the "
                   "workers run on other machines.")
def serve(host, port, workers):
    """Run a deployment in the foreground: Dagster webserver + daemon + N Celery workers; Ctrl-C stops all.

    \b
    Settings (environment): LAKEHOUSE_POSTGRES_URL (instance), LAKEHOUSE_CELERY_BROKER_URL (step queue),
    LAKEHOUSE_ROOT=s3://bucket/prefix with LAKEHOUSE_S3_ENDPOINT_URL and AWS_* (data). More workers on
    other machines: `celery -A resources.celery_steps worker -Q dagster --concurrency 1` with the same settings.

    \b
    Example:
        LAKEHOUSE_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/lakehouse \\
        LAKEHOUSE_CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672// lakehouse serve --workers 2
    """
    from .instance import PROJECT_ROOT, ensure_dagster_home
    from .common import UsageFailure, settings

    s = settings()
    if workers is None:
        workers = 2 if s.celery_broker_url else 0
    if workers and not s.celery_broker_url:
        raise UsageFailure(f"--workers {workers} needs LAKEHOUSE_CELERY_BROKER_URL (e.g. "
                           f"amqp://guest:guest@127.0.0.1:5672//); or use --workers 0")
    problems = preflight(s)
    if problems:
        raise UsageFailure("; ".join(problems))
    home = ensure_dagster_home()  # also exports PGPASSWORD for the children when the URL has a password
    env = dict(os.environ, DAGSTER_HOME=str(home), LAKEHOUSE_ROOT=s.root_location)
    if not s.postgres_url:
        click.echo("instance: embedded SQLite under DAGSTER_HOME (one machine only; set LAKEHOUSE_POSTGRES_URL "
                   "to share it)")
    workspace = str(PROJECT_ROOT / "workspace.yaml")
    daemon_argv = [_bin("dagster-daemon"), "run", "-w", workspace]
    interval = os.environ.get("LAKEHOUSE_DAEMON_INTERVAL_S", "").strip()
    if interval:
        try:
            seconds = max(1, int(float(interval)))
        except ValueError:
            raise UsageFailure(f"LAKEHOUSE_DAEMON_INTERVAL_S={interval[:20]!r} is not a number of seconds") from None
        daemon_argv = [sys.executable, "-c", DAEMON_WITH_INTERVAL.format(interval=seconds), "run", "-w", workspace]
    stopped = leftovers.stop_leftovers(home / STATE_FILE, home, "serve", STOP_GRACE_S)
    if stopped:
        fail_interrupted_runs(stopped)  # as the stop that never came would have
    children = Children(env, str(PROJECT_ROOT), state=home / STATE_FILE)
    try:
        free_leftovers("start")
    except Exception as exc:  # the daemon's run monitoring frees them later anyway
        click.echo(f"could not check for leftover runs and slots: {exc.__class__.__name__}: {str(exc)[:200]}", err=True)

    stopping = {"signal": None}

    def on_signal(signum, _frame):
        stopping["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        for i in range(workers):
            children.start(f"worker {i + 1}", [
                _bin("celery"), "-A", "resources.celery_steps", "worker", "-Q", "dagster", "--concurrency", "1",
                "--prefetch-multiplier", "1", "-n", f"lakehouse-{os.getpid()}-{i + 1}@%h", "--loglevel", "WARNING",
                "--without-gossip", "--without-mingle"])
        children.start("daemon", daemon_argv)
        children.start("webserver", [_bin("dagster-webserver"), "-h", host, "-p", str(port), "-w", workspace])
        click.echo(f"Dagster home: {home}\nLakehouse root: {s.root_location}\n"
                   f"Step queue: {'Celery, ' + str(workers) + ' local worker(s)' if s.celery_broker_url else 'in the run process'}")
        if _wait_ready(host, port, children, lambda: stopping["signal"] is not None):
            click.echo(f"Dagster UI: http://{host}:{port} (Ctrl-C stops everything)")
        elif stopping["signal"] is None and not children.exited():
            click.echo(f"the webserver has not answered in {READY_TIMEOUT_S:.0f}s; still running, check its output",
                       err=True)
        restarts = 0
        while stopping["signal"] is None:
            dead = children.exited()
            if dead and dead[0].startswith("worker") and restarts < MAX_WORKER_RESTARTS:
                # A lost worker's step goes back to the queue (late acks); a fresh worker takes its place.
                restarts += 1
                children.restart(dead[0])
            elif dead:
                click.echo(f"{dead[0]} exited with code {dead[1]}: stopping the others", err=True)
                code = 1
                break
            time.sleep(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        click.echo("stopping: " + ", ".join(n for n, _ in children.procs))
        ours = children.group_pids()
        children.stop()
        children.forget()
        try:
            fail_interrupted_runs(ours)
            free_leftovers("stop")
        except Exception as exc:  # the instance may be what failed; the stop itself succeeded
            click.echo(f"could not check for interrupted runs: {exc.__class__.__name__}: {str(exc)[:200]}", err=True)
    sys.exit(code)
