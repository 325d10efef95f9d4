"""The admin API's routes: what each does (through the shared service), its scope, and its OpenAPI document.

The route table is the one source of the server's dispatch, the scopes it enforces and the
OpenAPI document (``openapi()``): a route cannot exist without being documented, nor be
documented with another scope than the one checked.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from worker import __version__
from worker.admin.audit import Actor
from worker.admin.forms import FormError, Part, files, parse_form
from worker.admin.forms import field as form_field
from worker.admin.service import (
    EXISTING_NAME_CHOICES,
    AmbiguousNameError,
    ExistingName,
    NameTakenError,
    WatchlistService,
    nothing_enrolled,
    resolve_identity,
)
from worker.admin.visitors import UnknownVisitorError, VisitorService
from worker.errors import FacewatchError, UnknownIdentityError, WatchlistError
from worker.vision.image import decode_image

# -- response bodies (the schemas of the OpenAPI document) ------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(_Out):
    error: str


class IdentityOut(_Out):
    identity: str
    name: str
    templates: int
    metadata: dict[str, Any]
    created: str = Field(description="ISO 8601 UTC")


class IdentityList(_Out):
    identities: list[IdentityOut]


class TemplateOut(_Out):
    id: int
    source: str | None
    quality: float | None
    model_version: str
    created: str = Field(description="ISO 8601 UTC")


class IdentityDetail(_Out):
    identity: str
    name: str
    templates: list[TemplateOut]
    metadata: dict[str, Any]
    created: str = Field(description="ISO 8601 UTC")


class SimilarOut(_Out):
    identity: str
    name: str | None
    distance: float


class AcceptedOut(_Out):
    image: str
    template: int
    quality: float


class RejectedOut(_Out):
    image: str
    reason: str
    admit: str | None


class EnrollOut(_Out):
    name: str
    identity: str | None
    accepted: list[AcceptedOut]
    rejected: list[RejectedOut]
    videos: list[dict[str, Any]]
    similar: list[SimilarOut] = Field(
        description="other identities a new template is within the match threshold of (the same person twice?)"
    )


class NothingEnrolled(_Out):
    error: str
    report: EnrollOut


class RemovedOut(_Out):
    removed: str
    templates: int
    erasure: str
    detail: str | None = None


class FaceOut(_Out):
    image: str
    box: list[int]
    status: str
    identity: str | None
    name: str | None
    score: float
    distance: float | None
    confidence: float | None
    threshold: float


class IdentifyOut(_Out):
    images: int
    faces: list[FaceOut]


class StatsOut(_Out):
    identities: int
    templates: int
    version: int
    unpublished: int | None = None
    key_id: str | None = None  # the encryption key's public id; null: the store is not encrypted
    healthy: bool
    problems: list[str]


class PurgeOut(_Out):
    pending: bool
    erasure: str
    detail: str | None = None


class AuditEntry(BaseModel):
    model_config = ConfigDict(extra="allow")  # details vary by action (counts, flags)

    time: str
    who: str
    action: str
    outcome: str
    identity: str | None = None


AuditEntry.model_fields["time"].description = "UTC, ISO 8601"


class AuditOut(_Out):
    entries: list[AuditEntry]


class VisitorOut(_Out):
    visitor_id: str
    first_seen: str
    last_seen: str
    tracks: int
    visits: int


class VisitorList(_Out):
    visitors: list[VisitorOut]


class VisitorDetail(_Out):
    visitor_id: str
    embeddings_held: bool
    first_seen: str | None
    last_seen: str | None
    visits: list[dict[str, Any]]
    tracks: list[dict[str, Any]]


class ForgottenOut(_Out):
    forgotten: str


class IdentityPatch(BaseModel):
    """PATCH body: the fields to change."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = None
    metadata: dict[str, Any] | None = None


# -- requests and routes ---------------------------------------------------------------------------


@dataclass
class Request:
    """What a handler gets: the caller, path parameters, query, body."""

    actor: Actor
    params: dict[str, str]
    query: dict[str, str]
    content_type: str
    body: bytes


@dataclass
class Response:
    status: int
    body: Any  # a JSON value, or bytes with ``content_type``
    content_type: str = "application/json"


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI style: /v1/identities/{id}
    scope: str | None  # None: no token needed
    summary: str
    handler: str  # the Api method's name
    responses: dict[int, tuple[str, type[BaseModel] | None]]
    body: str | None = None  # "multipart" or "json"
    query: tuple[tuple[str, str], ...] = ()  # (name, description)
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # multipart fields' schemas

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path) + "$")


_ERRORS = {
    400: ("bad input (one-line error)", Error),
    401: ("no token or an unknown token", Error),
    403: ("the token lacks the scope", Error),
    411: ("a body without Content-Length (chunked encoding is refused)", Error),
    413: ("request body larger than admin.max_request_bytes", Error),
    429: ("rate limit of the token (or of the address, for failed logins); see Retry-After", Error),
}
_ID_NOT_FOUND = {
    404: ("no identity with this id (or name)", Error),
    409: ("the name is shared by several identities: use an id", Error),
}
_REPLICATION = {503: ("the change is kept locally but not yet published to the replication topic", Error)}
_PHOTO = {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", None, "Liveness", "healthz", {200: ("alive", None)}),
    Route("GET", "/openapi.json", None, "This document", "openapi", {200: ("the OpenAPI document", None)}),
    Route("GET", "/v1/identities", "read", "List identities", "list", {200: ("every identity", IdentityList)}),
    Route(
        "POST",
        "/v1/identities",
        "write",
        "Enroll a new person from photos (the CLI's quality gates and report)",
        "create",
        {
            201: ("enrolled; the report", EnrollOut),
            409: ("the name is already enrolled and 'existing' is refuse (or merge, and it is ambiguous)", Error),
            422: ("nothing enrolled: every photo rejected (the report says why)", NothingEnrolled),
            **_REPLICATION,
        },
        body="multipart",
        fields={
            "name": {"type": "string", "minLength": 1},
            "id": {"type": "string", "description": "identity id (default: a new UUID)"},
            "existing": {
                "type": "string",
                "enum": list(EXISTING_NAME_CHOICES),
                "description": "the name is already enrolled: refuse (default), merge the photos into that "
                "identity, or make a second identity with the same name",
            },
            "metadata": {"type": "string", "description": "a JSON object"},
            "photo": _PHOTO,
        },
    ),
    Route(
        "GET",
        "/v1/identities/{id}",
        "read",
        "One identity and its templates (never embeddings)",
        "show",
        {200: ("the identity", IdentityDetail), **_ID_NOT_FOUND},
    ),
    Route(
        "PATCH",
        "/v1/identities/{id}",
        "write",
        "Rename an identity and/or replace its metadata",
        "update",
        {200: ("the identity after the change", IdentityOut), **_ID_NOT_FOUND, **_REPLICATION},
        body="json",
    ),
    Route(
        "DELETE",
        "/v1/identities/{id}",
        "admin",
        "Remove an identity and its templates for good (verified erasure)",
        "remove",
        {
            200: ("removed; erasure verified on disk", RemovedOut),
            202: ("removed; erasure pending (a reader held the store; retried, see /v1/purge)", RemovedOut),
            **_ID_NOT_FOUND,
            **_REPLICATION,
        },
    ),
    Route(
        "POST",
        "/v1/identities/{id}/photos",
        "write",
        "Add photos to an identity",
        "add_photos",
        {
            201: ("enrolled; the report", EnrollOut),
            422: ("nothing enrolled", NothingEnrolled),
            **_ID_NOT_FOUND,
            **_REPLICATION,
        },
        body="multipart",
        fields={"photo": _PHOTO},
    ),
    Route(
        "POST",
        "/v1/identify",
        "read",
        "Identify the faces of uploaded images",
        "identify",
        {200: ("every face found", IdentifyOut)},
        body="multipart",
        fields={"image": _PHOTO},
    ),
    Route(
        "GET",
        "/v1/export",
        "admin",
        "The watchlist as an export file (JSON lines; biometric data)",
        "export",
        {200: ("the export (facewatch watchlist restore reads it)", None)},
    ),
    Route("GET", "/v1/stats", "read", "Counts, version, health", "stats", {200: ("the store's state", StatsOut)}),
    Route(
        "POST",
        "/v1/purge",
        "admin",
        "Finish a pending erasure",
        "purge",
        {200: ("no erasure is pending", PurgeOut), 202: ("erasure still pending", PurgeOut)},
    ),
    Route(
        "GET",
        "/v1/visitors",
        "read",
        "Anonymous visitors held (visitors.enabled; never embeddings)",
        "visitors",
        {200: ("every visitor", VisitorList)},
    ),
    Route(
        "GET",
        "/v1/visitors/report",
        "read",
        "The visits report: counts, dwell times, hours (as facewatch visitors report --json)",
        "visitor_report",
        {200: ("the report", None)},
        query=(
            ("since", "an ISO time (UTC unless it says otherwise) or a span back from now: 30m, 24h, 7d (24h)"),
            ("camera", "only this camera or zone"),
        ),
    ),
    Route(
        "GET",
        "/v1/visitors/{id}",
        "read",
        "One visitor's visits and tracks (never embeddings)",
        "visitor",
        {200: ("the visitor", VisitorDetail), 404: ("no visitor with this id", Error)},
    ),
    Route(
        "DELETE",
        "/v1/visitors/{id}",
        "admin",
        "Forget a visitor: its embeddings, tracks and visits are deleted for good",
        "forget_visitor",
        {200: ("forgotten", ForgottenOut), 404: ("no visitor with this id", Error)},
    ),
    Route(
        "GET",
        "/v1/audit",
        "admin",
        "Audit log entries, oldest first",
        "audit",
        {200: ("the entries", AuditOut)},
        query=(
            ("since", "entries at or after this UTC time (ISO 8601, e.g. 2026-01-31 or 2026-01-31T12:00)"),
            ("until", "entries before this UTC time"),
            ("who", "a token name (or user:NAME for CLI commands)"),
            ("action", "enroll, update, remove, identify, export, purge, denied, ..."),
            ("identity", "an identity id"),
            ("limit", "the newest N entries only"),
        ),
    ),
)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class Api:
    """The route handlers over one WatchlistService."""

    def __init__(self, service: WatchlistService) -> None:
        self.service = service
        self.visitor_service = VisitorService(service.settings, service.audit)
        self.max_pixels = service.settings.images.max_pixels

    def healthz(self, request: Request) -> Response:
        return Response(200, {"status": "ok"})

    def openapi(self, request: Request) -> Response:
        return Response(200, openapi())

    def list(self, request: Request) -> Response:
        return Response(200, {"identities": self.service.list_identities(request.actor)})

    def show(self, request: Request) -> Response:
        return Response(200, self.service.show(request.params["id"], request.actor))

    def _enroll(
        self,
        request: Request,
        parts: list[Part],
        name: str,
        identity_id: str | None,
        metadata: dict | None,
        existing: ExistingName = "refuse",
    ) -> Response:
        photos = files(parts, "photo")
        if not photos:
            raise FormError("no photo: send one or more files in form field 'photo'")
        with _uploads(photos) as (paths, shown):
            report, outcome = self.service.enroll(name, paths, metadata, identity_id, request.actor, existing)
            record = _unmask(report.as_dict(), shown)
        if outcome is None:
            message = str(nothing_enrolled(report))
            for temporary, original in shown.items():
                message = message.replace(temporary, original)
            return Response(422, {"error": message, "report": record})
        return Response(201, record)

    def create(self, request: Request) -> Response:
        parts = parse_form(request.content_type, request.body)
        name = form_field(parts, "name")
        if not name or not name.strip():
            raise FormError("form field 'name' is required")
        identity_id = form_field(parts, "id")
        if identity_id is not None and self._exists(identity_id):
            raise WatchlistError(f"identity id {identity_id!r} already exists (add photos with POST .../photos)")
        metadata = _metadata(form_field(parts, "metadata"))
        existing = form_field(parts, "existing") or "refuse"
        if existing not in EXISTING_NAME_CHOICES:
            raise FormError(f"form field 'existing' must be one of {', '.join(EXISTING_NAME_CHOICES)}")
        return self._enroll(request, parts, name, identity_id, metadata, existing)  # type: ignore[arg-type]

    def _exists(self, identity_id: str) -> bool:
        with self.service.open_store(must_exist=False) as store:
            return store.find_identity(identity_id) is not None

    def add_photos(self, request: Request) -> Response:
        with self.service.open_store(must_exist=False) as store:
            identity_id = resolve_identity(store, request.params["id"]).id
        parts = parse_form(request.content_type, request.body)
        return self._enroll(request, parts, "", identity_id, None)

    def update(self, request: Request) -> Response:
        try:
            patch = IdentityPatch.model_validate_json(request.body or b"{}")
        except ValueError as exc:
            first = exc.errors()[0] if hasattr(exc, "errors") else {"msg": str(exc)}
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            raise FormError(f"bad JSON body at {where}: {first['msg']}") from None
        record, _ = self.service.update(request.params["id"], patch.name, patch.metadata, request.actor)
        return Response(200, record)

    def remove(self, request: Request) -> Response:
        identity_id, removed, outcome = self.service.remove(request.params["id"], request.actor)
        body = {"removed": identity_id, "templates": removed, "erasure": outcome.erasure}
        if outcome.erasure_pending:
            return Response(202, {**body, "detail": outcome.erasure_pending})
        return Response(200, body)

    def identify(self, request: Request) -> Response:
        parts = files(parse_form(request.content_type, request.body), "image")
        if not parts:
            raise FormError("no image: send one or more files in form field 'image'")
        images = []
        for number, part in enumerate(parts):
            name = part.filename or f"image {number + 1}"
            images.append((name, decode_image(part.data, self.max_pixels, name=name)))
        faces = self.service.identify_images(images, request.actor)
        return Response(200, {"images": len(images), "faces": faces})

    def export(self, request: Request) -> Response:
        with _private_dir() as folder:
            path = Path(folder) / "export.jsonl"
            self.service.export(path, request.actor)
            data = path.read_bytes()
        return Response(200, data, "application/x-ndjson")

    def stats(self, request: Request) -> Response:
        stats, problems = self.service.stats()
        return Response(200, {**stats, "healthy": not problems, "problems": problems})

    def purge(self, request: Request) -> Response:
        pending, outcome = self.service.purge(request.actor)
        body = {"pending": pending, "erasure": outcome.erasure}
        if outcome.erasure_pending:
            return Response(202, {**body, "detail": outcome.erasure_pending})
        return Response(200, body)

    def visitors(self, request: Request) -> Response:
        return Response(200, {"visitors": self.visitor_service.list_visitors()})

    def visitor(self, request: Request) -> Response:
        return Response(200, self.visitor_service.show(request.params["id"]))

    def forget_visitor(self, request: Request) -> Response:
        self.visitor_service.forget(request.params["id"], request.actor)
        return Response(200, {"forgotten": request.params["id"]})

    def visitor_report(self, request: Request) -> Response:
        camera = request.query.get("camera")
        report = self.visitor_service.report(request.query.get("since", "24h"), [camera] if camera else [])
        return Response(200, report)

    def audit(self, request: Request) -> Response:
        query = request.query
        limit = query.get("limit")
        if limit is not None and (not limit.isdigit() or int(limit) < 1):
            raise FormError("limit must be a positive integer")
        entries = self.service.audit.query(
            since=query.get("since"),
            until=query.get("until"),
            who=query.get("who"),
            action=query.get("action"),
            identity=query.get("identity"),
            limit=int(limit) if limit else None,
        )
        return Response(200, {"entries": entries})

    def handle(self, route: Route, request: Request) -> Response:
        """Run the route's handler; a user error becomes a one-line JSON error with its status."""
        from worker.admin.service import ReplicationPending

        handler: Callable[[Request], Response] = getattr(self, route.handler)
        try:
            return handler(request)
        except (UnknownIdentityError, UnknownVisitorError) as exc:
            return Response(404, {"error": _one_line(exc)})
        except (NameTakenError, AmbiguousNameError) as exc:
            return Response(409, {"error": _one_line(exc)})
        except ReplicationPending as exc:
            return Response(503, {"error": _one_line(exc)})
        except FacewatchError as exc:
            return Response(400, {"error": _one_line(exc)})


def _metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not a JSON value")

    try:
        metadata = json.loads(text, parse_constant=no_constant)
    except ValueError as exc:
        raise FormError(f"form field 'metadata' is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise FormError("form field 'metadata' must be a JSON object")
    return metadata


def _private_dir() -> tempfile.TemporaryDirectory[str]:
    """A folder only this user can read, in memory where there is /dev/shm: photos are biometric data."""
    shm = "/dev/shm"
    return tempfile.TemporaryDirectory(prefix="facewatch-admin-", dir=shm if os.path.isdir(shm) else None)


class _uploads:
    """Uploaded photos as files for the enroller (its gates read files); deleted on exit."""

    def __init__(self, photos: list[Part]) -> None:
        self.photos = photos
        self._dir = _private_dir()

    def __enter__(self) -> tuple[list[str], dict[str, str]]:
        folder = Path(self._dir.name)
        paths, shown = [], {}
        for number, photo in enumerate(self.photos):
            # A fixed suffix: uploads are photos (the enroller reads a video by its suffix).
            path = folder / f"upload-{number}.photo"
            path.write_bytes(photo.data)
            paths.append(str(path))
            shown[str(path)] = _safe_name(photo.filename) or f"photo {number + 1}"
        return paths, shown

    def __exit__(self, *exc: object) -> None:
        self._dir.cleanup()


def _safe_name(name: str | None) -> str | None:
    if not name:
        return None
    return "".join(c if c.isprintable() else "?" for c in os.path.basename(name))[:200] or None


def _unmask(value: Any, shown: dict[str, str]) -> Any:
    """``value`` with the temporary files' paths replaced by the uploaded names."""
    if isinstance(value, str):
        for temporary, original in shown.items():
            value = value.replace(temporary, original)
        return value
    if isinstance(value, list):
        return [_unmask(v, shown) for v in value]
    if isinstance(value, dict):
        return {k: _unmask(v, shown) for k, v in value.items()}
    return value


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ROUTES."""
    models = {m for r in ROUTES for _, m in [*r.responses.values(), *_ERRORS.values()] if m is not None}
    models.add(IdentityPatch)
    _, defs = models_json_schema(
        [(m, "serialization") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {"operationId": route.handler, "summary": route.summary, "responses": {}}
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            for name in re.findall(r"\{(\w+)\}", route.path)
        ]
        parameters += [
            {"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
            for name, text in route.query
        ]
        if parameters:
            operation["parameters"] = parameters
        if route.scope:
            operation["security"] = [{"bearer": [route.scope]}]
            operation["description"] = f"Needs a token with scope {route.scope} (or a higher one)."
        if route.body == "multipart":
            required = [n for n in route.fields if n in ("name", "photo", "image")]
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {"type": "object", "properties": route.fields, "required": required}
                    }
                },
            }
        elif route.body == "json":
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/IdentityPatch"}}},
            }
        responses = dict(route.responses)
        if route.scope:
            responses = {**{k: v for k, v in _ERRORS.items() if route.body or k not in (411, 413)}, **responses}
        for status, (description, model) in sorted(responses.items()):
            entry: dict[str, Any] = {"description": description}
            if model is not None:
                entry["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
            elif route.handler == "export":
                entry["content"] = {"application/x-ndjson": {"schema": {"type": "string"}}}
            elif route.handler in ("healthz", "openapi", "visitor_report"):
                entry["content"] = {"application/json": {"schema": {"type": "object"}}}
            operation["responses"][str(status)] = entry
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "facewatch admin API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
