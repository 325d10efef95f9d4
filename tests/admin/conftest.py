"""A real admin API server in this process (port 0) on a temporary store, and HTTP helpers."""

from __future__ import annotations

import http.client
import json
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from worker.admin.audit import AuditLog
from worker.admin.server import AdminServer
from worker.admin.service import WatchlistService
from worker.admin.tokens import new_token
from worker.config import load_settings


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def multipart(
    fields: dict[str, str] | None = None, files: list[tuple[str, str, bytes]] | None = None
) -> tuple[str, bytes]:
    """(content type, body) of a multipart/form-data request: plain fields and (field, file name, data) files."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, value in (fields or {}).items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        chunks.append(value.encode() + b"\r\n")
    for name, filename, data in files or []:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        chunks.append(data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks)


class Client:
    """Requests to one server, each on a fresh connection."""

    def __init__(self, server: AdminServer, context: ssl.SSLContext | None = None) -> None:
        self.server = server
        self.context = context

    def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        host = "127.0.0.1"
        if self.context is not None:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, self.server.port, timeout=120, context=self.context
            )
        else:
            connection = http.client.HTTPConnection(host, self.server.port, timeout=120)
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if content_type:
            sent["Content-Type"] = content_type
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return Reply(response.status, dict(response.getheaders()), response.read())
        finally:
            connection.close()


@dataclass
class Admin:
    server: AdminServer
    client: Client
    tokens: dict[str, str]  # scope -> token value
    store: Path
    audit: AuditLog
    service: WatchlistService


def tokens_config() -> tuple[dict[str, str], str]:
    values, lines = {}, []
    for scope in ("read", "write", "admin"):
        value, line = new_token(f"t-{scope}", scope)
        values[scope] = value
        lines.append(line)
    return values, "\n".join(lines)


@pytest.fixture
def make_admin(tmp_path) -> Iterator[Any]:
    """Start servers with config overrides; all are stopped at the end."""
    started: list[AdminServer] = []

    def make(admin: dict[str, Any] | None = None, watchlist: dict[str, Any] | None = None, **sections: Any) -> Admin:
        values, lines = tokens_config()
        store = tmp_path / "watchlist.db"
        settings = load_settings(
            None,
            {
                "watchlist": {"store": str(store), **(watchlist or {})},
                "admin": {"host": "127.0.0.1", "port": 0, "tokens": lines, **(admin or {})},
                **sections,
            },
        )
        audit = AuditLog.from_settings(settings)
        service = WatchlistService(settings, audit)
        server = AdminServer(service, settings.admin).start()
        started.append(server)
        return Admin(server, Client(server), values, store, audit, service)

    yield make
    for server in started:
        server.stop()
