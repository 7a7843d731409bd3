"""A real S3-compatible server on loopback for tests: moto's standalone server (PyPI `moto[server]`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid

from helpers import free_port, service_reachable

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "lakehouse-test", "AWS_SECRET_ACCESS_KEY": "lakehouse-test-secret",
               "AWS_REGION": "us-east-1"}


class S3Server:
    """Starts `moto_server` on a free port; stop() ends it by PID."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not service_reachable("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not start on port {self.port}")
            time.sleep(0.1)

    def env(self, bucket: str, prefix: str = "lake") -> dict[str, str]:
        return {**CREDENTIALS, "LAKEHOUSE_S3_ENDPOINT_URL": self.endpoint, "LAKEHOUSE_ROOT": f"s3://{bucket}/{prefix}"}

    def new_bucket(self) -> str:
        bucket = f"lake-{uuid.uuid4().hex[:12]}"
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT"), timeout=10).read()
        return bucket

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
