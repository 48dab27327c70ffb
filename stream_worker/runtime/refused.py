"""A worker the broker refused: /health answers 503 with the reason, nothing is retried.

Credentials, a certificate or a mechanism the broker refuses do not fix themselves, and
retrying a refused login can lock the account: the worker says so once in its log, keeps its
web port answering 503 (a readiness probe shows why in its events), and exits non-zero when
stopped. Fix the Secret, then restart it.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from stream_worker.exceptions import KafkaSecurityError

log = logging.getLogger(__name__)


def serve_refusal(host: str, port: int, error: KafkaSecurityError) -> None:
    """Log ``error`` once, answer 503 on every path until SIGTERM/SIGINT, then raise it."""
    body = json.dumps({"status": "kafka_refused", "reason": str(error)}).encode()

    class Refused(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET  # noqa: N815 - the stdlib's name

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line in the log, not one per probe

    log.error("Kafka refused this worker, not retrying: %s", error)
    stopped = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        server = ThreadingHTTPServer((host, port), Refused)
    except OSError as exc:
        log.error("cannot serve /health on %s:%d either: %s", host, port, exc)
        raise error from None
    thread = threading.Thread(target=server.serve_forever, name="refused-health", daemon=True)
    thread.start()
    try:
        stopped.wait()
    finally:
        server.shutdown()
        server.server_close()
    raise error
