"""The health server: probes answer, idle connections are closed, the Server header tells nothing."""

from __future__ import annotations

import socket
import time
import urllib.request

from worker.obs import http as health_http
from worker.obs.http import HealthServer
from worker.obs.metrics import Metrics


def _server(monkeypatch) -> HealthServer:
    monkeypatch.setattr(health_http, "IDLE_TIMEOUT_S", 0.5)
    metrics = Metrics()
    server = HealthServer(metrics.registry, lambda: (True, {}), lambda: (False, {"problems": ["x"]}), "127.0.0.1", 0)
    server.start()
    return server


def test_probes_and_the_server_header(monkeypatch):
    server = _server(monkeypatch)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as response:
            assert response.status == 200 and response.headers["Server"] == "facewatch"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz", timeout=5)
            raise AssertionError("readyz should fail")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
    finally:
        server.stop()


def test_an_idle_connection_is_closed(monkeypatch):
    server = _server(monkeypatch)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as idle:
            started = time.monotonic()
            assert idle.recv(1) == b""  # the server hangs up on a client that sends nothing
            assert time.monotonic() - started < 4
    finally:
        server.stop()
