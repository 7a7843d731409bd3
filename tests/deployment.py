"""A real Dagster deployment on loopback for tests: dagster-webserver + dagster-daemon over a temporary DAGSTER_HOME.

Both processes (and the code servers and run workers they spawn) are stopped by PID, also when a test fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests
import yaml

from cli.instance import PROJECT_ROOT
from lakehouse.liveness import stop_processes

from helpers import free_port

# Dagster 1.13 has no setting for the backfill daemon's loop: it sleeps DEFAULT_DAEMON_INTERVAL_SECONDS (30 s,
# read from dagster._daemon.controller at each loop) between ticks. A backfill needs a few ticks (launch, the
# next layers, completion), so the test daemon runs the real `dagster-daemon` with that constant lowered.
DAEMON_LAUNCHER = (
    "import sys, dagster._daemon.controller as c; c.DEFAULT_DAEMON_INTERVAL_SECONDS = {interval}; "
    "from dagster._daemon.cli import main; sys.argv[0] = 'dagster-daemon'; sys.exit(main())"
)


class Deployment:
    def __init__(self, base: Path, daemon_interval_s: int = 1, env: dict | None = None):
        self.base = base
        self.home = base / "dagster_home"
        self.root = base / "lake"
        self.logs = base / "logs"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.daemon_interval_s = daemon_interval_s
        self.extra_env = env or {}
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_URL", "LAKEHOUSE_EXCHANGE_URL")}
        env.update(DAGSTER_HOME=str(self.home), LAKEHOUSE_ROOT=str(self.root), LAKEHOUSE_EXCHANGE="simulated",
                   PYTHONPATH=str(PROJECT_ROOT), **self.extra_env)
        return env

    def write_config(self) -> None:
        self.home.mkdir(parents=True)
        self.root.mkdir(parents=True)
        self.logs.mkdir(parents=True)
        config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
        # The queue is checked every 5 s by default; a test run should start at once.
        config["run_coordinator"] = {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"dequeue_interval_seconds": 1},
        }
        # Nothing retries a failed run behind the test's back: the failure must reach the CLI.
        config["run_retries"] = {"enabled": False}
        if "event_log_storage" in config:  # its default folder follows DAGSTER_HOME; the test reads it from here too
            config["event_log_storage"]["config"] = {"base_dir": str(self.home / "history" / "runs")}
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(config))
        (self.base / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [{"python_module": {
            "module_name": "definitions", "working_directory": str(PROJECT_ROOT)}}]}))

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.logs / f"{name}.log", "wb")
        self.procs.append(subprocess.Popen(argv, env=self.env, cwd=str(self.base), stdout=out, stderr=subprocess.STDOUT))

    def start(self, timeout_s: float = 180.0, already_configured: bool = False) -> "Deployment":
        if not already_configured:
            self.write_config()
            # Create the SQLite storages once, here: the webserver and daemon starting together on a fresh
            # instance would both run the migrations and race ("table already exists") on a busy machine.
            from dagster import DagsterInstance

            with DagsterInstance.from_config(str(self.home)) as instance:
                instance.get_runs(limit=1)
        bin_dir = Path(sys.executable).parent
        workspace = str(self.base / "workspace.yaml")
        self._spawn("webserver", [str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port),
                                  "-w", workspace])
        self._spawn("daemon", [sys.executable, "-c", DAEMON_LAUNCHER.format(interval=self.daemon_interval_s),
                               "run", "-w", workspace])
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Until the webserver answers GraphQL with the code location loaded and the daemon is heartbeating."""
        deadline = time.monotonic() + timeout_s
        query = ("{ repositoriesOrError { __typename ... on RepositoryConnection { nodes { name } } } "
                 "instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }")
        last = None
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}:\n{self.log_tail()}")
            try:
                data = requests.post(f"{self.url}/graphql", json={"query": query}, timeout=5).json()["data"]
                repos = data["repositoriesOrError"].get("nodes") or []
                daemons = {d["daemonType"]: d["healthy"] for d in data["instance"]["daemonHealth"]["allDaemonStatuses"]}
                last = (repos, daemons)
                if repos and daemons.get("BACKFILL") and daemons.get("QUEUED_RUN_COORDINATOR"):
                    return
            except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
                last = exc
            time.sleep(0.5)
        raise RuntimeError(f"deployment not ready after {timeout_s}s ({last}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for log in sorted(self.logs.glob("*.log")):
            out.append(f"--- {log.name}")
            out.extend(log.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(out)

    def stop(self) -> None:
        """SIGTERM each process we started and everything it spawned (collected by PID first), then SIGKILL."""
        victims: list[psutil.Process] = []
        for p in self.procs:
            try:
                parent = psutil.Process(p.pid)
                victims.extend([parent, *parent.children(recursive=True)])
            except psutil.NoSuchProcess:
                pass
        # Graceful first (the daemon stops its threads), but a test deployment's state is thrown away anyway.
        stop_processes(victims, grace_s=4)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
