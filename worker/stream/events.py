"""The events the worker publishes, and their versioned JSON schema.

Six kinds, told apart by ``type``:
- ``track_started``: a face was detected that no open track followed: a new track, not yet identified;
- ``track_updated`` (only with ``events.track_update_interval_s``): where an open track is, and what
  the decision says so far, at most once per interval of frame time;
- ``face_match``: a tracked person was recognised as a watchlist identity (once per track and
  identity, subject to the re-alert cooldown);
- ``track_ended``: a track closed; says how long it lasted and its ``outcome``: matched (who it was),
  uncertain (near someone, never safely that person) or unknown (no similarity to anyone reported);
- ``visit_started`` / ``visit_ended`` (only with ``visitors.enabled``): an anonymous visitor's visit
  to a zone began or ended (docs/visitors.md). They carry a random visitor id, never a face.

Every box comes with the frame's width, height and sequence number (``frame_seq``), so a consumer can
draw it on, or crop, the right frame at the right scale.

``event_id`` is a UUID derived from camera, track and identity (or "started", "updated-N", "ended"),
so a replay after a crash repeats the same id and consumers can drop duplicates. Events carry no face pixels unless
``events.thumbnails`` is on. The schema is in worker/stream/schema/events-v2.json
(``facewatch events schema`` prints it; a test keeps it in step with these models). Version 2 added
track_started, track_updated, the frame fields, the calibrated ``confidence`` and ``threshold``, and
track_ended's ``outcome``; events-v1.json stays
in the repository as the history of what version-1 consumers validate against.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 2
SCHEMA_PATH = Path(__file__).parent / "schema" / f"events-v{SCHEMA_VERSION}.json"
_NAMESPACE = uuid.UUID("6f1c2f4e-3d7a-5b8e-9c0d-1e2f3a4b5c6d")


def event_id(camera_id: str, track_id: str, subject: str) -> str:
    """Deterministic event id: the same camera, track and subject always give the same UUID."""
    return str(uuid.uuid5(_NAMESPACE, f"{camera_id}\x1f{track_id}\x1f{subject}"))


def timestamp(seconds: float) -> datetime:
    """A UTC datetime from Unix seconds."""
    return datetime.fromtimestamp(seconds, tz=UTC)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[2] = SCHEMA_VERSION
    event_id: str = Field(description="UUID derived from camera, track and identity: identical on replay")
    camera_id: str
    track_id: str = Field(description="Unique per camera: birth time of the track in ms and an index")
    model_version: str = Field(description="Embedding model that produced the decision")
    watchlist_version: int = Field(description="Watchlist version the decision was made against")


class _Boxed(_Event):
    box: list[int] = Field(min_length=4, max_length=4, description="[left, top, right, bottom] in the frame, pixels")
    frame_width: int = Field(ge=1, description="Width of the frame the box is in, pixels")
    frame_height: int = Field(ge=1, description="Height of the frame the box is in, pixels")
    frame_seq: int = Field(ge=0, description="Sequence number of that frame in its camera's stream")
    frame_timestamp: datetime = Field(description="Capture time of that frame")


class TrackStarted(_Boxed):
    """A face no open track followed: a new track, announced before anything is decided about it."""

    type: Literal["track_started"] = "track_started"


class TrackUpdated(_Boxed):
    """Where an open track is now, and the decision so far (events.track_update_interval_s)."""

    type: Literal["track_updated"] = "track_updated"
    identity_id: str | None = Field(description="Identity the track was recognised as so far, or null")
    identity_name: str | None
    faces: int = Field(ge=0, description="Faces detected over the track's life so far")
    faces_voted: int = Field(ge=0, description="Of those, faces good enough to vote")
    started_at: datetime


class FaceMatch(_Boxed):
    """A tracked face recognised as a watchlist identity."""

    type: Literal["face_match"] = "face_match"
    identity_id: str
    identity_name: str
    score: float = Field(ge=0.0, le=1.0, description="Match confidence of the track's faces, 0..1")
    distance: float = Field(ge=0.0, description="Median embedding distance of the matching faces")
    confidence: float | None = Field(
        ge=0.0,
        le=1.0,
        description="Calibrated match confidence, median of the matching faces': (1 - FMR(distance))^N, FMR "
        "measured on LFW, N the enrolled identities (docs/accuracy.md); null for a trained embedder.model, "
        "which has no FMR table",
    )
    threshold: float = Field(gt=0.0, description="The match distance (watchlist threshold) it was decided against")
    faces: int = Field(ge=1, description="Faces of the track that matched this identity when it was decided")
    faces_voted: int = Field(
        0, ge=0, description="Faces of the track that voted so far (good enough: decisions.min_quality, min_face_size)"
    )
    first_seen: datetime
    last_seen: datetime
    thumbnail_jpeg_base64: str | None = Field(None, description="Face crop, only when events.thumbnails is on")


class TrackEnded(_Event):
    """A track closed: the person left, the stream ended, or the worker checkpointed or stopped."""

    type: Literal["track_ended"] = "track_ended"
    outcome: Literal["matched", "uncertain", "unknown"] = Field(
        description="matched: recognised as identity_id; uncertain: some good face was near an enrolled identity, "
        "but the track was never safely recognised; unknown: no good face was near anyone (or none voted)"
    )
    identity_id: str | None = Field(description="Matched identity, or null unless the outcome is matched")
    identity_name: str | None
    best_score: float | None = Field(
        description="Best match score of the track's voting faces; null when the outcome is unknown (a stranger "
        "has no similarity to report)"
    )
    best_distance: float | None = Field(
        None, ge=0.0, description="Nearest distance of a voting face to an enrolled identity; null when unknown"
    )
    best_confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="Calibrated confidence at best_distance; null when the outcome is unknown"
    )
    threshold: float | None = Field(
        None, gt=0.0, description="The match distance the track was decided against; null if no face voted"
    )
    faces: int = Field(ge=0, description="Faces detected over the track's life")
    faces_voted: int = Field(
        0, ge=0, description="Of those, faces good enough to vote (decisions.min_quality, decisions.min_face_size)"
    )
    started_at: datetime
    ended_at: datetime
    duration_s: float = Field(ge=0.0)
    reason: Literal["lost", "scene_cut", "end_of_stream", "checkpoint", "shutdown"] = Field(
        description="lost: not seen for tracking.max_age; scene_cut: the camera's picture changed to another shot; "
        "checkpoint: closed at a Kafka checkpoint boundary"
    )


class _VisitEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[2] = SCHEMA_VERSION
    event_id: str = Field(description="UUID derived from the visit and the kind of event: identical on replay")
    camera_id: str = Field(description="Camera of the visit's first track (the Kafka key)")
    zone: str = Field(description="visitors.zones entry the camera belongs to, else the camera id")
    visitor_id: str = Field(description="Anonymous visitor id: random, linked to no name; forgotten after retention")
    visit_id: str = Field(description="UUID derived from visitor, zone and first track")
    returning: bool = Field(
        description="The visitor had an earlier trip: earlier visits within visitors.retention_hours, none still "
        "open in another zone"
    )
    started_at: datetime


class VisitStarted(_VisitEvent):
    """An anonymous visitor's visit to a zone began (their first track there, or the first after a gap)."""

    type: Literal["visit_started"] = "visit_started"


class VisitEnded(_VisitEvent):
    """A visit ended: no track of the visitor in the zone for visitors.visit_gap_s, a merge, or shutdown."""

    type: Literal["visit_ended"] = "visit_ended"
    ended_at: datetime
    dwell_s: float = Field(ge=0.0, description="ended_at - started_at: first track's start to last track's end")
    tracks: int = Field(ge=1, description="Tracks of the visitor in the zone during the visit")
    reason: Literal["gap", "merged", "shutdown"] = Field(
        description="gap: not seen for visitors.visit_gap_s; merged: two visitors turned out one person; "
        "shutdown: the worker stopped"
    )


AnyEvent = TrackStarted | TrackUpdated | FaceMatch | TrackEnded | VisitStarted | VisitEnded
Event = Annotated[AnyEvent, Field(discriminator="type")]
_event_adapter: TypeAdapter[AnyEvent] = TypeAdapter(Event)


CLOUDEVENTS_SPEC = "1.0"
CLOUDEVENTS_TYPE_PREFIX = "dev.facewatch."  # reverse-DNS, as CloudEvents recommends for `type`


def cloudevent_type(event: AnyEvent) -> str:
    """The CloudEvents ``type`` of an event: ``dev.facewatch.`` + its ``type`` + ``.v`` + schema version."""
    return f"{CLOUDEVENTS_TYPE_PREFIX}{event.type}.v{event.schema_version}"


def cloudevent_headers(event: AnyEvent, emitted: datetime | None = None) -> list[tuple[str, bytes]]:
    """Kafka headers of the CloudEvents 1.0 Kafka protocol binding, binary content mode.

    The record's value stays the event's JSON (the ``data``); ``ce_id`` is the event id, so a replay
    repeats it; ``ce_time`` is when this copy was emitted (the event's own times are in the data);
    ``ce_source`` names the camera; ``ce_subject`` the track (or the visit).
    """
    emitted = emitted or datetime.now(UTC)
    subject = event.visit_id if isinstance(event, VisitStarted | VisitEnded) else event.track_id
    attributes = {
        "ce_specversion": CLOUDEVENTS_SPEC,
        "ce_id": event.event_id,
        "ce_source": f"/facewatch/cameras/{event.camera_id}",
        "ce_type": cloudevent_type(event),
        "ce_time": emitted.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "ce_subject": subject,
        "ce_dataschema": f"https://facewatch.dev/schema/events-v{event.schema_version}.json",
        "content-type": "application/json",
    }
    return [(name, value.encode()) for name, value in attributes.items()]


def parse_event(data: str | bytes) -> AnyEvent:
    """An event from its JSON form (raises pydantic.ValidationError when it is not one)."""
    return _event_adapter.validate_json(data)


def event_schema() -> dict:
    """JSON schema of an event (any kind), as committed in the schema file."""
    schema = _event_adapter.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://facewatch.dev/schema/events-v{SCHEMA_VERSION}.json"
    schema["title"] = f"facewatch event, schema version {SCHEMA_VERSION}"
    return schema


def schema_text() -> str:
    """The schema file's exact text."""
    return json.dumps(event_schema(), indent=2, sort_keys=True) + "\n"
