"""The visitor analytics' operations, shared by `facewatch visitors ...` and the admin API: list, show, forget, report.

Forgetting a visitor deletes its embeddings, tracks and visits for good (worker/visitors/store.py)
and is audited; reads are not (they show no embeddings, only ids, times and counts).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.admin.audit import Actor, AuditLog, cli_actor
from worker.config import Settings
from worker.errors import FacewatchError
from worker.visitors.store import VisitorStore


class UnknownVisitorError(FacewatchError):
    """No visitor with the given id."""


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="seconds")


class VisitorService:
    """Visitor operations on ``path`` (default: visitors.store)."""

    def __init__(self, settings: Settings, audit: AuditLog | None = None, path: str | Path | None = None) -> None:
        self.settings = settings
        self.path = Path(path) if path else Path(settings.visitors.store)
        self._audit = audit
        self._lock = threading.Lock()

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            self._audit = AuditLog.from_settings(self.settings)
        return self._audit

    def open_store(self, create: bool = False) -> VisitorStore:
        """The visitor store; FacewatchError when it does not exist (unless ``create``)."""
        if not self.path.exists() and not create:
            raise FacewatchError(f"no visitor store at {self.path} (visitors.store)")
        return VisitorStore(self.path)

    def list_visitors(self) -> list[dict[str, Any]]:
        """Every visitor held: first and last seen, tracks, visits."""
        with self.open_store() as store:
            visits: dict[str, int] = {}
            for visit in store.visits():
                visits[visit.visitor_id] = visits.get(visit.visitor_id, 0) + 1
            return [
                {
                    "visitor_id": visitor.id,
                    "first_seen": _iso(visitor.first_seen),
                    "last_seen": _iso(visitor.last_seen),
                    "tracks": visitor.tracks,
                    "visits": visits.get(visitor.id, 0),
                }
                for visitor in store.visitors()
            ]

    def show(self, visitor_id: str) -> dict[str, Any]:
        """One visitor's visits and tracks (never the embeddings)."""
        with self.open_store() as store:
            visitor = store.visitor(visitor_id)
            visits = store.visits(visitor_id=visitor_id)
            if visitor is None and not visits:
                raise UnknownVisitorError(f"no visitor {visitor_id!r}")
            tracks = store.visitor_tracks(visitor_id)
        return {
            "visitor_id": visitor_id,
            "embeddings_held": visitor is not None,
            "first_seen": _iso(visitor.first_seen) if visitor else None,
            "last_seen": _iso(visitor.last_seen) if visitor else None,
            "visits": [
                {
                    "visit_id": v.id,
                    "zone": v.zone,
                    "camera_id": v.camera,
                    "started_at": _iso(v.started),
                    "ended_at": _iso(v.ended),
                    "dwell_s": round(v.dwell_s, 1),
                    "tracks": v.tracks,
                    "returning": v.returning,
                    "open": v.open,
                }
                for v in visits
            ],
            "tracks": [
                {"camera_id": t.camera, "track_id": t.track_id, "started_at": _iso(t.started), "faces": t.faces}
                for t in tracks
            ],
        }

    def forget(self, visitor_id: str, actor: Actor | None = None) -> None:
        """Delete a visitor's embeddings, tracks and visits for good (audited); UnknownVisitorError if absent."""
        actor = actor or cli_actor()
        with self._lock:
            try:
                with self.open_store() as store:
                    if not store.forget(visitor_id):
                        raise UnknownVisitorError(f"no visitor {visitor_id!r}")
            except FacewatchError as exc:
                self.audit.record(actor, "visitor_forget", f"error: {exc}", visitor=visitor_id)
                raise
        self.audit.record(actor, "visitor_forget", "ok", visitor=visitor_id)

    def report(self, since: str, cameras: Sequence[str] = ()) -> dict[str, Any]:
        """The visits report (counts, dwell, hours) of the store's visits since ``since`` (ISO time or 30m/24h/7d)."""
        from worker.visitors.report import build_report, parse_since

        moment = parse_since(since)
        with self.open_store() as store:
            visits = store.visits(since=moment.timestamp())
        return build_report(visits, moment, cameras)
