"""A real HTTP webhook receiver on loopback: records every JSON body posted to it, answers with scripted statuses."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    """`with WebhookReceiver() as hook:` ... `hook.url`, `hook.messages` (parsed JSON bodies, in order).

    `statuses` lists the answers to the first requests (e.g. [500] fails once, "slow" answers after `slow_s`);
    afterwards every answer is 200.
    Every request is counted in `requests`; only bodies answered 200 (delivered) are kept in `messages`.
    """

    def __init__(self, statuses=(), slow_s: float = 1.0):
        self.statuses = list(statuses)
        self.slow_s = slow_s
        self.messages: list[dict] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802  (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.requests += 1
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == "slow":  # answers 200 only after the client's timeout
                    time.sleep(receiver.slow_s)
                    status = 200
                if status == 200:
                    with receiver._lock:
                        receiver.messages.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"receiver error")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/T000/B000/secret"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
