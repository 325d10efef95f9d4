"""No token, a wrong token or a token without the scope changes nothing, on every route (a real server and store)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.admin.conftest import multipart
from worker.admin.api import ROUTES
from worker.admin.tokens import SCOPES, TokenSet, digest, new_token, parse_tokens
from worker.config import AdminConfig
from worker.errors import ConfigError
from worker.samples import sample_paths
from worker.watchlist.store import WatchlistStore

GUARDED = [r for r in ROUTES if r.scope is not None]


def _request_parts(route, identity_id: str) -> tuple[str, bytes | None, str | None]:
    """A request the route would accept from a token with the scope: the refusal must come from auth alone."""
    path = route.path.replace("{id}", identity_id)
    if route.body == "multipart":
        photo = sample_paths()["Grace Hopper"].read_bytes()
        field = "image" if route.handler == "identify" else "photo"
        content_type, body = multipart(
            {"name": "Mallory"} if route.handler == "create" else {}, [(field, "g.jpg", photo)]
        )
        return path, body, content_type
    if route.body == "json":
        return path, b'{"name": "Mallory"}', "application/json"
    return path, None, None


def _state(store) -> tuple:
    with WatchlistStore(store) as opened:
        return opened.version, [(i.id, i.name, i.templates) for i in opened.list_identities()]


@pytest.mark.parametrize("route", GUARDED, ids=lambda r: f"{r.method} {r.path}")
def test_every_guarded_route_refuses_and_changes_nothing(make_admin, route):
    admin = make_admin()
    with WatchlistStore(admin.store) as opened:
        victim, _ = opened.add_identity_with_templates(
            "Victim", np.random.default_rng(1).normal(size=(1, 128)).astype(np.float32)
        )
    before = _state(admin.store)
    path, body, content_type = _request_parts(route, victim.id)
    lower = [s for s in SCOPES if SCOPES.index(s) < SCOPES.index(route.scope)]
    attempts = [(None, 401), ("fw_not-a-token", 401), (admin.tokens["admin"] + "x", 401)]
    attempts += [(admin.tokens[s], 403) for s in lower]
    for token, expected in attempts:
        reply = admin.client.request(route.method, path, token, body, content_type)
        assert reply.status == expected, (token, reply.body)
        assert set(reply.json()) == {"error"}
        if expected == 401:
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert _state(admin.store) == before
    denied = admin.audit.query(action="denied")
    assert len(denied) == len(attempts)
    assert {e["outcome"] for e in denied} == {str(code) for _, code in attempts}
    assert all(e["route"] == f"{route.method} {route.path}" and e["from"] == "127.0.0.1" for e in denied)
    assert [e["who"] for e in denied if e["outcome"] == "403"] == [f"t-{s}" for s in lower]


def test_a_token_with_the_scope_gets_through(make_admin):
    admin = make_admin()
    assert admin.client.request("GET", "/v1/audit").status == 401
    for scope in ("read", "write"):
        assert admin.client.request("GET", "/v1/audit", admin.tokens[scope]).status == 403
    assert admin.client.request("GET", "/v1/audit", admin.tokens["admin"]).status == 200
    for scope in SCOPES:  # read is in every scope
        assert admin.client.request("GET", "/v1/stats", admin.tokens[scope]).status in (200, 400)


def test_tokens_are_stored_hashed_and_scopes_nest():
    value, line = new_token("alice", "write")
    name, scopes, hexdigest = line.split(":")
    assert (name, scopes) == ("alice", "write") and value not in line and bytes.fromhex(hexdigest) == digest(value)
    (token,) = parse_tokens(line, "test")
    assert token.allows("read") and token.allows("write") and not token.allows("admin")
    tokens = TokenSet(AdminConfig(tokens=line))
    assert tokens.check(value) == token
    assert tokens.check(value[:-1]) is None and tokens.check("") is None and tokens.check(value + "\x00") is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("alice:read", "expected NAME:SCOPES:SHA256"),
        ("alice:root:" + "0" * 64, "unknown scope root"),
        ("alice:read:fw_plaintexttoken", "SHA-256 in hex"),
        ("al ice:read:" + "0" * 64, "token name"),
        ("a:read:" + "0" * 64 + "\na:write:" + "1" * 64, "appears twice"),
    ],
)
def test_bad_token_lines_are_one_line_config_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_tokens(text, "admin.tokens")


def test_no_tokens_at_all_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no tokens"):
        TokenSet(AdminConfig())
    with pytest.raises(ConfigError, match="tokens_file"):
        TokenSet(AdminConfig(tokens_file=tmp_path / "missing"))


def test_a_rotated_tokens_file_is_read_again(tmp_path):
    old, old_line = new_token("old", "read")
    new, new_line = new_token("new", "read")
    path = tmp_path / "tokens"
    path.write_text(old_line + "\n")
    tokens = TokenSet(AdminConfig(tokens_file=path))
    assert tokens.check(old) is not None
    path.write_text(new_line + "\n")
    import os

    os.utime(path, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    assert tokens.check(old) is None and tokens.check(new) is not None
