"""The events the worker publishes, and their versioned JSON schema.

Two kinds, told apart by ``type``:
- ``face_match``: a tracked person was recognised as a watchlist identity (once per track and
  identity, subject to the re-alert cooldown);
- ``track_ended``: a track closed; says how long it lasted and who it was, or that it stayed unknown.

``event_id`` is a UUID derived from camera, track and identity (or "ended"), so a replay after a
crash repeats the same id and consumers can drop duplicates. Events carry no face pixels unless
``events.thumbnails`` is on. The schema is in worker/stream/schema/events-v1.json
(``facewatch events schema`` prints it; a test keeps it in step with these models).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1
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

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(description="UUID derived from camera, track and identity: identical on replay")
    camera_id: str
    track_id: str = Field(description="Unique per camera: birth time of the track in ms and an index")
    model_version: str = Field(description="Embedding model that produced the decision")
    watchlist_version: int = Field(description="Watchlist version the decision was made against")


class FaceMatch(_Event):
    """A tracked face recognised as a watchlist identity."""

    type: Literal["face_match"] = "face_match"
    identity_id: str
    identity_name: str
    score: float = Field(ge=0.0, le=1.0, description="Match confidence of the track's faces, 0..1")
    distance: float = Field(ge=0.0, description="Median embedding distance of the matching faces")
    faces: int = Field(ge=1, description="Faces of the track that matched this identity when it was decided")
    faces_voted: int = Field(
        0, ge=0, description="Faces of the track that voted so far (good enough: decisions.min_quality, min_face_size)"
    )
    box: list[int] = Field(min_length=4, max_length=4, description="[left, top, right, bottom] in the decision frame")
    first_seen: datetime
    last_seen: datetime
    frame_timestamp: datetime = Field(description="Capture time of the frame that completed the decision")
    thumbnail_jpeg_base64: str | None = Field(None, description="Face crop, only when events.thumbnails is on")


class TrackEnded(_Event):
    """A track closed: the person left, the stream ended, or the worker checkpointed or stopped."""

    type: Literal["track_ended"] = "track_ended"
    identity_id: str | None = Field(description="Matched identity, or null for an unknown person")
    identity_name: str | None
    best_score: float | None = Field(description="Best match score of any identity, null if never embedded")
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


Event = Annotated[FaceMatch | TrackEnded, Field(discriminator="type")]
_event_adapter: TypeAdapter[FaceMatch | TrackEnded] = TypeAdapter(Event)


def parse_event(data: str | bytes) -> FaceMatch | TrackEnded:
    """An event from its JSON form (raises pydantic.ValidationError when it is not one)."""
    return _event_adapter.validate_json(data)


def event_schema() -> dict:
    """JSON schema of an event (either kind), as committed in the schema file."""
    schema = _event_adapter.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://facewatch.dev/schema/events-v{SCHEMA_VERSION}.json"
    schema["title"] = f"facewatch event, schema version {SCHEMA_VERSION}"
    return schema


def schema_text() -> str:
    """The schema file's exact text."""
    return json.dumps(event_schema(), indent=2, sort_keys=True) + "\n"
