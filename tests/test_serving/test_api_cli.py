"""`lakehouse api` as a user runs it: a real uvicorn process on loopback, stopped by PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli

from helpers import free_port

LAKEHOUSE = str(Path(sys.executable).with_name("lakehouse"))


def test_serves_on_127_0_0_1_by_default(tmp_path, built):
    root, _ = built
    port = free_port()
    env = {**os.environ, "LAKEHOUSE_ROOT": str(root)}
    env.pop("LAKEHOUSE_REDIS_URL", None)
    proc = subprocess.Popen([LAKEHOUSE, "api", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, body = time.monotonic() + 30, None
        while time.monotonic() < deadline and body is None:
            try:
                body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/symbols", timeout=2).read())
            except OSError:
                time.sleep(0.2)
        assert [s["path"] for s in body] == ["BTC-USDT", "ETH-USDT"]
        local = [line.split()[3] for line in subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                                                            text=True).stdout.splitlines()]
        assert local == [f"127.0.0.1:{port}"]  # loopback only, not 0.0.0.0
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert f"Coverage page: http://127.0.0.1:{port}/" in out


def test_bad_settings_exit_2_naming_the_variable(monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_REDIS_URL", "localhost:6379")
    result = CliRunner().invoke(cli, ["api"])
    assert result.exit_code == 2
    assert "LAKEHOUSE_REDIS_URL must be a redis:// URL" in result.output and "Traceback" not in result.output
