"""The worker's HTTP endpoints: /metrics (Prometheus), /healthz (alive), /readyz (ready to work)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from worker.errors import ConfigError

log = logging.getLogger(__name__)

# Each returns (ok, details); details are shown in the response body for operators.
Check = Callable[[], tuple[bool, dict]]
IDLE_TIMEOUT_S = 10.0  # a connection that sends nothing for this long is closed (it holds a thread)


class HealthServer:
    """A small threaded HTTP server; ``port`` 0 picks a free port (see ``.port`` after start)."""

    def __init__(self, registry: CollectorRegistry, alive: Check, ready: Check, host: str, port: int) -> None:
        self.registry = registry
        self.alive = alive
        self.ready = ready
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = IDLE_TIMEOUT_S  # socket timeout: idle keep-alive or half-sent requests end

            def version_string(self) -> str:
                return "facewatch"  # no Python version in the Server header

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, details = (server.alive if path == "/healthz" else server.ready)()
                    body = json.dumps({"status": "ok" if ok else "unavailable", **details}).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("http: " + format, *args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:  # e.g. a worker on this host has the port: say which setting moves it
            raise ConfigError(
                f"http: cannot listen on {host}:{port}: {exc.strerror or exc} (http.port; 0: off)"
            ) from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
