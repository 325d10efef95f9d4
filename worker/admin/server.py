"""The admin API's HTTP server (`facewatch admin serve`): tokens, scopes, limits, TLS; routes in api.py.

The standard library's threaded HTTP server, as for the worker's /metrics (worker/obs/http.py): an
admin API sees a few requests a minute, so an async framework buys nothing here, and every
request runs one operation of the shared service under its lock anyway. What a framework would
add is written out below and tested: body size limits before reading, idle timeouts, per-token
rate limits, and constant-time token checks (tokens.py).

Every request that fails authentication (401) or authorisation (403) is audited as ``denied``,
counted, and changes nothing: the check comes before the body is read or a handler runs.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from worker.admin.api import ROUTES, Api, Request, Response, Route
from worker.admin.audit import Actor
from worker.admin.ratelimit import RateLimiter
from worker.admin.service import WatchlistService
from worker.admin.tokens import TokenSet
from worker.config import AdminConfig
from worker.errors import ConfigError

log = logging.getLogger(__name__)

BODY_METHODS = {"POST", "PATCH", "PUT"}


class AdminMetrics:
    """The admin API's counters, on its own /metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "facewatch_admin_requests",
            "Admin API requests, by route and status",
            ["route", "status"],
            registry=registry,
        )
        self.rejected = Counter(
            "facewatch_admin_rejected",
            "Admin API requests refused before their handler ran, by reason",
            ["reason"],
            registry=registry,
        )


class AdminServer:
    """The admin API on ``config.host``:``config.port`` (port 0: a free one, see ``.port``), HTTPS with tls_cert."""

    def __init__(
        self, service: WatchlistService, config: AdminConfig, registry: CollectorRegistry | None = None
    ) -> None:
        self.service = service
        self.config = config
        self.tokens = TokenSet(config)
        self.api = Api(service)
        self.registry = registry or CollectorRegistry()
        self.metrics = AdminMetrics(self.registry)
        self.limiter = RateLimiter(config.rate_per_minute)
        handler = _handler_class(self)
        self._server = ThreadingHTTPServer((config.host, config.port), handler)
        self._server.daemon_threads = True
        self.scheme = "http"
        if config.tls_cert and config.tls_key:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
            except (OSError, ssl.SSLError) as exc:
                self._server.server_close()
                raise ConfigError(f"admin.tls_cert/tls_key cannot be loaded: {exc}") from None
            # The handshake runs in the request's thread (do_handshake_on_connect=False + the handler's
            # first read), so one slow client cannot stall the accept loop.
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="admin-http", daemon=True)

    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}"

    def start(self) -> AdminServer:
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until ``stop`` (from a signal handler's thread) or KeyboardInterrupt."""
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """The route for ``method path``, its path parameters, and whether the path exists for another method."""
        other = False
        for route in ROUTES:
            found = route.pattern.match(path)
            if found:
                if route.method == method:
                    return route, {k: urllib.parse.unquote(v) for k, v in found.groupdict().items()}, False
                other = True
        return None, {}, other


def _handler_class(server: AdminServer) -> type[BaseHTTPRequestHandler]:
    config = server.config

    class Handler(BaseHTTPRequestHandler):
        timeout = config.idle_timeout_s  # idle keep-alive or half-sent requests end; they hold a thread
        protocol_version = "HTTP/1.1"

        def version_string(self) -> str:
            return "facewatch"

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PATCH(self) -> None:
            self._dispatch("PATCH")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def _dispatch(self, method: str) -> None:
            split = urllib.parse.urlsplit(self.path)
            path = split.path
            address = self.client_address[0] if self.client_address else "unknown"
            if path == "/metrics" and method == "GET":
                self._send(Response(200, generate_latest(server.registry), CONTENT_TYPE_LATEST), "/metrics")
                return
            route, params, other = server.match(method, path)
            if route is None:
                self._refuse(405 if other else 404, "method not allowed" if other else "no such route", "route")
                return
            actor = Actor("anonymous", address)
            if route.scope is not None:
                token = self._authenticate(route, address)
                if token is None:
                    return
                actor = Actor(token.name, address)
            body = self._body(method, route)
            if body is None:
                return
            try:
                query = dict(urllib.parse.parse_qsl(split.query, strict_parsing=False, errors="strict"))
            except (ValueError, UnicodeDecodeError):
                self._refuse(400, "malformed query string", "bad_request", route)
                return
            request = Request(actor, params, query, self.headers.get("Content-Type", ""), body)
            try:
                response = server.api.handle(route, request)
            except Exception:
                log.exception("admin API: %s %s failed", method, route.path)
                response = Response(500, {"error": "internal error (logged)"})
            self._send(response, route.path)

        def _authenticate(self, route: Route, address: str) -> Any:
            """The request's token when it may use ``route``; otherwise the refusal is sent and None returned."""
            wait = server.limiter.blocked(f"addr:{address}")
            if wait:
                self._refuse(429, "too many failed attempts from this address", "rate_limited", route, wait)
                return None
            header = self.headers.get("Authorization", "")
            scheme, _, presented = header.partition(" ")
            token = server.tokens.check(presented.strip()) if scheme.lower() == "bearer" and presented else None
            if token is None:
                server.limiter.take(f"addr:{address}")
                server.service.audit.record(
                    Actor("anonymous", address), "denied", "401", route=f"{route.method} {route.path}"
                )
                self._refuse(401, "a valid bearer token is required", "unauthenticated", route)
                return None
            wait = server.limiter.take(f"token:{token.name}")
            if wait:
                self._refuse(429, f"rate limit of token {token.name}", "rate_limited", route, wait)
                return None
            if not token.allows(route.scope):
                server.service.audit.record(
                    Actor(token.name, address), "denied", "403", route=f"{route.method} {route.path}"
                )
                self._refuse(403, f"token {token.name} lacks scope {route.scope}", "forbidden", route)
                return None
            return token

        def _body(self, method: str, route: Route) -> bytes | None:
            """The request body, within the size limit; None when refused (the refusal is sent)."""
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                self._refuse(411, "send the body with a Content-Length (no chunked encoding)", "bad_request", route)
                return None
            length_header = self.headers.get("Content-Length")
            if length_header is None:
                if method in BODY_METHODS and route.body:
                    self._refuse(411, "Content-Length required", "bad_request", route)
                    return None
                return b""
            if not length_header.isdigit():
                self.close_connection = True
                self._refuse(400, "bad Content-Length", "bad_request", route)
                return None
            length = int(length_header)
            if length > config.max_request_bytes:
                self.close_connection = True  # the body is not read: the connection cannot be reused
                limit = config.max_request_bytes
                self._refuse(
                    413, f"request body of {length} bytes exceeds {limit} (admin.max_request_bytes)", "too_large", route
                )
                return None
            try:
                return self.rfile.read(length) if length else b""
            except TimeoutError:
                self.close_connection = True
                return None

        def _refuse(self, status: int, message: str, reason: str, route: Route | None = None, wait: float = 0) -> None:
            server.metrics.rejected.labels(reason).inc()
            # The body (if any) is left unread: on a kept-alive connection it would be taken for the
            # next request, so a refusal always ends the connection.
            self.close_connection = True
            headers = {}
            if status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="facewatch"'
            if wait:
                headers["Retry-After"] = str(max(1, round(wait + 0.5)))
            self._send(Response(status, {"error": message}), route.path if route else "unknown", headers)

        def _send(self, response: Response, route: str, headers: dict[str, str] | None = None) -> None:
            body = response.body
            if not isinstance(body, bytes):
                body = json.dumps(body, separators=(",", ":")).encode()
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            server.metrics.requests.labels(route, str(response.status)).inc()

        def log_message(self, format: str, *args: object) -> None:
            log.debug("admin http: " + format, *args)

    return Handler
