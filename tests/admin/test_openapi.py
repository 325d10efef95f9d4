"""The OpenAPI document, and a property-based run of the real server against it (hypothesis).

Every generated request, valid or not, must get a documented status below 500 and a body that
matches the documented schema. CI runs a short pass; SCHEMA_EXAMPLES sets the number of
examples per operation for the long run (docs/admin_api.md).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

import jsonschema
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.admin.conftest import multipart
from worker.admin.api import ROUTES, openapi
from worker.samples import sample_paths
from worker.watchlist.store import WatchlistStore

EXAMPLES = int(os.environ.get("SCHEMA_EXAMPLES", "12"))
DOC = openapi()


def test_the_document_covers_every_route_with_its_scope():
    for route in ROUTES:
        operation = DOC["paths"][route.path][route.method.lower()]
        assert operation["operationId"] == route.handler
        if route.scope:
            assert operation["security"] == [{"bearer": [route.scope]}]
            assert {"401", "403", "429"} <= operation["responses"].keys()
        else:
            assert "security" not in operation
    for schema in DOC["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    assert DOC["openapi"].startswith("3.1")


def test_the_server_serves_the_same_document(make_admin):
    admin = make_admin()
    reply = admin.client.request("GET", "/openapi.json")
    assert reply.status == 200 and reply.json() == json.loads(json.dumps(DOC))


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its component references inlined (hypothesis-jsonschema reads no remote refs)."""
    if "$ref" in schema:
        return _resolve(DOC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    return {k: ({n: _resolve(v) for n, v in value.items()} if k in ("properties", "$defs") else value)
            for k, value in schema.items()}  # fmt: skip


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of a JSON schema of the kinds the document's request bodies use (object, string, null, anyOf)."""
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=60)
    if kind == "object" and "properties" in schema:
        optional = {n: from_schema(s) for n, s in schema["properties"].items()}
        return st.fixed_dictionaries({}, optional=optional)
    if kind == "object":
        return st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=4)
    return JSON_VALUES


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**schema, "components": DOC["components"]})


PHOTO = sample_paths()["Grace Hopper"].read_bytes()
texts = st.text(min_size=1, max_size=40)


def _request(route) -> st.SearchStrategy[tuple]:
    """(path with query, body, content type, token kind) for ``route``."""
    operation = DOC["paths"][route.path][route.method.lower()]
    identity = st.one_of(st.just("known"), texts)
    query_names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
    query = (
        st.dictionaries(st.sampled_from(query_names), st.text(max_size=30), max_size=3) if query_names else st.just({})
    )
    content = operation.get("requestBody", {}).get("content", {})
    if "multipart/form-data" in content:
        fields = content["multipart/form-data"]["schema"]["properties"]
        files = st.lists(st.one_of(st.just(PHOTO), st.binary(max_size=2000)), min_size=0, max_size=2)
        plain = {n: st.one_of(st.none(), texts, st.just('{"k": 1}')) for n in fields if n not in ("photo", "image")}
        file_field = "photo" if "photo" in fields else "image"

        def form(values: dict[str, str | None], photos: list[bytes]) -> tuple[bytes, str]:
            given = {k: v for k, v in values.items() if v is not None}
            content_type, body = multipart(given, [(file_field, f"f{i}.jpg", p) for i, p in enumerate(photos)])
            return body, content_type

        bodies = st.builds(form, st.fixed_dictionaries(plain), files) | st.tuples(
            st.binary(max_size=200), st.sampled_from(["multipart/form-data; boundary=x", "text/plain"])
        )
    elif "application/json" in content:
        schema = _resolve(content["application/json"]["schema"])
        bodies = st.tuples(from_schema(schema).map(lambda v: json.dumps(v).encode()), st.just("application/json"))
        bodies |= st.tuples(st.binary(max_size=100), st.just("application/json"))
    else:
        bodies = st.just((None, None))
    tokens = st.sampled_from(["admin", "admin", "admin", "none", "wrong", "read"])

    def build(ident: str, params: dict[str, str], body: tuple, token: str) -> tuple:
        path = route.path.replace("{id}", urllib.parse.quote(ident, safe=""))
        if params:
            path += "?" + urllib.parse.urlencode(params)
        return path, body[0], body[1], token

    return st.builds(build, identity, query, bodies, tokens)


def test_every_operation_against_its_schema(make_admin, tmp_path):
    from worker.visitors.store import VisitorStore

    VisitorStore(tmp_path / "visitors.db").close()  # an empty visitor store: its routes answer, not 400
    admin = make_admin(admin={"rate_per_minute": 1e6}, visitors={"store": str(tmp_path / "visitors.db")})
    with WatchlistStore(admin.store) as opened:
        opened.add_identity_with_templates(
            "Known", np.random.default_rng(2).normal(size=(2, 128)).astype(np.float32), identity_id="known"
        )
    tokens = {"admin": admin.tokens["admin"], "read": admin.tokens["read"], "none": None, "wrong": "fw_wrong"}
    problems: list[str] = []

    def checker(route):
        operation = DOC["paths"][route.path][route.method.lower()]

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(_request(route))
        def check(request: tuple) -> None:
            path, body, content_type, token = request
            reply = admin.client.request(route.method, path, tokens[token], body, content_type)
            where = f"{route.method} {path} ({token}) -> {reply.status}: {reply.body[:200]!r}"
            documented = operation["responses"].get(str(reply.status))
            if reply.status >= 500 or documented is None:
                problems.append(f"undocumented or server error: {where}")
                return
            media = documented.get("content", {})
            if "application/json" in media:
                try:
                    _validator(media["application/json"]["schema"]).validate(reply.json())
                except (jsonschema.ValidationError, ValueError) as exc:
                    problems.append(f"schema violation: {where}: {str(exc).splitlines()[0]}")
            elif media:
                assert reply.headers["Content-Type"] in media, where

        return check

    for route in ROUTES:
        checker(route)()
    assert problems == []
