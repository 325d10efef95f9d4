"""The visitor store: anonymous visitors, their tracks, visits and the opt-out list in one SQLite file.

What is biometric and how long it lives:

- ``visitors.centroid_sum`` (the sum of a visitor's track embeddings) and ``tracks.embedding``
  are biometric. A track is deleted ``visitors.retention_hours`` after it ended and its embedding
  is subtracted from its visitor's sum; a visitor goes with its last track (``purge``).
- ``visits`` hold no embedding: a random visitor id, zone, camera, start, end, track count. They
  feed reports and are kept ``visitors.aggregate_retention``; once the visitor's embeddings are
  gone the id can no longer be linked to a face.
- ``outbox`` holds the visit events as published (JSON: ids, zone, times; no face): those a track
  caused, kept with the track so that a replay after a crash returns them again, and those owed
  (visits ended by the clock or at shutdown) until a sink confirmed their delivery.
- ``opt_out`` holds the embeddings of people who asked never to be counted (with their consent,
  for that purpose only); ``opt_out remove`` deletes them.

Deletion is real: ``secure_delete`` zeroes freed content in the pages that held it, and every
deletion checkpoints the WAL (TRUNCATE) so the old page copies leave the WAL file as well
(tests/visitors/test_store.py reads the bytes on disk). Files are created owner-only (0600).

Other processes (the CLI's ``forget``, ``opt-out``, ``recluster --apply``) change the store while
the worker runs; each such change bumps ``version`` and appends to ``changes`` (ids only), and the
worker's visitor stage applies them before its next write (worker/stream/visitors.py).
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.config import DEFAULT_VISITOR_STORE
from worker.errors import FacewatchError
from worker.models.face_spec import EMBEDDING_SIZE
from worker.runtime.sqlite import SqliteFile

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: the outbox of visit events
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS visitors (
    id TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    centroid_sum BLOB NOT NULL,
    weight REAL NOT NULL,
    tracks INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tracks (
    camera TEXT NOT NULL,
    track_id TEXT NOT NULL,
    visitor_id TEXT NOT NULL,
    zone TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL NOT NULL,
    faces INTEGER NOT NULL,
    embedding BLOB NOT NULL,
    PRIMARY KEY (camera, track_id)
);
CREATE INDEX IF NOT EXISTS tracks_visitor ON tracks(visitor_id);
CREATE INDEX IF NOT EXISTS tracks_ended ON tracks(ended);
CREATE TABLE IF NOT EXISTS visits (
    id TEXT PRIMARY KEY,
    visitor_id TEXT NOT NULL,
    zone TEXT NOT NULL,
    camera TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL NOT NULL,
    tracks INTEGER NOT NULL,
    returning_visitor INTEGER NOT NULL,
    open INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS visits_visitor ON visits(visitor_id);
CREATE INDEX IF NOT EXISTS visits_started ON visits(started);
CREATE TABLE IF NOT EXISTS opt_out (id TEXT PRIMARY KEY, embedding BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    camera TEXT,
    track_id TEXT,
    visitor_id TEXT NOT NULL,
    at REAL NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_track ON outbox(camera, track_id);
CREATE INDEX IF NOT EXISTS outbox_visitor ON outbox(visitor_id);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    version INTEGER NOT NULL,
    op TEXT NOT NULL,
    visitor_id TEXT
);
"""


class VisitorStoreError(FacewatchError):
    """The visitor store cannot be opened or used."""


@dataclass(frozen=True)
class VisitorRow:
    """A visitor as stored (its centroid is ``centroid_sum / weight``)."""

    id: str
    first_seen: float
    last_seen: float
    centroid_sum: np.ndarray
    weight: float
    tracks: int


@dataclass(frozen=True)
class VisitRow:
    """One visit of a visitor to a zone."""

    id: str
    visitor_id: str
    zone: str
    camera: str
    started: float
    ended: float
    tracks: int
    returning: bool
    open: bool

    @property
    def dwell_s(self) -> float:
        return max(0.0, self.ended - self.started)


@dataclass(frozen=True)
class TrackRow:
    """One track of a visitor (its embedding is the mean of its faces')."""

    camera: str
    track_id: str
    visitor_id: str
    zone: str
    started: float
    ended: float
    faces: int
    embedding: np.ndarray


@dataclass(frozen=True)
class OutboxEvent:
    """A visit event as published (``event``: its JSON), to be given again after a crash."""

    event_id: str
    visitor_id: str
    event: str


@dataclass(frozen=True)
class Change:
    """A change another process made: ``op`` is forget, opt_out, relabel or purge."""

    version: int
    op: str
    visitor_id: str | None


def _f32(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").reshape(-1).tobytes()


def _f64(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f8").reshape(-1).tobytes()


class VisitorStore(SqliteFile):
    """Visitors, tracks, visits and the opt-out list in a SQLite file; safe across threads and processes."""

    error = VisitorStoreError
    label = "visitor store"

    def __init__(self, path: str | Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        try:
            self._connect(path, DEFAULT_VISITOR_STORE, busy_timeout_ms)
            with self._write() as db:
                for statement in _SCHEMA.strip().split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                db.execute("INSERT OR IGNORE INTO meta VALUES ('version', '0')")
        except sqlite3.DatabaseError as exc:
            raise VisitorStoreError(f"visitor store {self.path} cannot be opened: {exc}") from exc
        schema = self._read("SELECT value FROM meta WHERE key = 'schema_version'")[0][0]
        if schema == "1":  # schema 2 only added the outbox table, created above
            with self._write() as db:
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            schema = str(SCHEMA_VERSION)
        if schema != str(SCHEMA_VERSION):
            raise VisitorStoreError(f"visitor store {self.path} has schema {schema}, expected {SCHEMA_VERSION}")

    # -- plumbing (the connection itself: worker/runtime/sqlite.py) ----------------------------

    def _bump(self, db: sqlite3.Connection, op: str, visitor_ids: Sequence[str | None]) -> int:
        version = int(db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0]) + 1
        db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(version),))
        db.executemany(
            "INSERT INTO changes (version, op, visitor_id) VALUES (?, ?, ?)", [(version, op, v) for v in visitor_ids]
        )
        return version

    @property
    def version(self) -> int:
        """Bumped by every change made outside the worker (forget, opt-out, relabel)."""
        return int(self._read("SELECT value FROM meta WHERE key = 'version'")[0][0])

    def changes_since(self, version: int) -> list[Change]:
        """The changes after ``version``, oldest first."""
        rows = self._read("SELECT version, op, visitor_id FROM changes WHERE version > ? ORDER BY seq", (version,))
        return [Change(*row) for row in rows]

    def checkpoint(self) -> bool:
        """Copy the WAL into the file and truncate it; False if readers kept it from finishing."""
        with self._lock:
            busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.info("visitor store %s: WAL checkpoint postponed by active readers", self.path)
        return not busy

    # -- the worker's writes ---------------------------------------------------------------------

    def track_visitor(self, camera: str, track_id: str) -> str | None:
        """The visitor a track was given, if it was recorded before (a replay after a crash)."""
        rows = self._read("SELECT visitor_id FROM tracks WHERE camera = ? AND track_id = ?", (camera, track_id))
        return rows[0][0] if rows else None

    def record_track(
        self,
        track: TrackRow,
        visitor: VisitorRow,
        merged: Sequence[str],
        visits: Sequence[VisitRow],
        seen_version: int,
        events: Sequence[OutboxEvent] = (),
    ) -> bool:
        """One track, its visitor's new centroid, merges, the visits it touched and the events it caused
        (kept with the track: ``track_events`` gives them back to a replay), in one transaction.

        Returns False (and writes nothing) when another process changed the store since
        ``seen_version``: the caller applies those changes first (a forgotten visitor must not come back).
        """
        with self._write() as db:
            version = int(db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
            if version != seen_version:
                return False
            db.execute(
                "INSERT OR REPLACE INTO tracks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    track.camera,
                    track.track_id,
                    visitor.id,
                    track.zone,
                    track.started,
                    track.ended,
                    track.faces,
                    _f32(track.embedding),
                ),
            )
            db.execute(
                "INSERT OR REPLACE INTO visitors VALUES (?, ?, ?, ?, ?, ?)",
                (
                    visitor.id,
                    visitor.first_seen,
                    visitor.last_seen,
                    _f64(visitor.centroid_sum),
                    visitor.weight,
                    visitor.tracks,
                ),
            )
            for old in merged:
                db.execute("UPDATE tracks SET visitor_id = ? WHERE visitor_id = ?", (visitor.id, old))
                db.execute("UPDATE visits SET visitor_id = ? WHERE visitor_id = ?", (visitor.id, old))
                db.execute("UPDATE outbox SET visitor_id = ? WHERE visitor_id = ?", (visitor.id, old))
                db.execute("DELETE FROM visitors WHERE id = ?", (old,))
            self._put_visits(db, visits)
            self._put_events(db, events, (track.camera, track.track_id), track.ended)
        return True

    def save_visits(self, visits: Sequence[VisitRow], owed: Sequence[OutboxEvent] = (), at: float = 0.0) -> None:
        """Insert or update visits (a visit that ended, or was closed at shutdown), and record the events
        that say so as owed until ``delivered`` (``at``: when, for the aggregate retention)."""
        with self._write() as db:
            self._put_visits(db, visits)
            self._put_events(db, owed, (None, None), at)

    @staticmethod
    def _put_events(
        db: sqlite3.Connection, events: Sequence[OutboxEvent], track: tuple[str | None, str | None], at: float
    ) -> None:
        db.executemany(
            "INSERT INTO outbox (event_id, camera, track_id, visitor_id, at, event) VALUES (?, ?, ?, ?, ?, ?)",
            [(e.event_id, *track, e.visitor_id, at, e.event) for e in events],
        )

    def track_events(self, camera: str, track_id: str) -> list[str]:
        """The events (JSON) a recorded track caused, in the order they were first returned."""
        rows = self._read("SELECT event FROM outbox WHERE camera = ? AND track_id = ? ORDER BY seq", (camera, track_id))
        return [r[0] for r in rows]

    def owed_events(self) -> list[str]:
        """Events (JSON) of visits ended by the clock or at shutdown whose delivery no sink confirmed yet."""
        return [r[0] for r in self._read("SELECT event FROM outbox WHERE track_id IS NULL ORDER BY seq")]

    def delivered(self, event_ids: Sequence[str]) -> int:
        """Owed events delivered: no longer owed. Returns how many were."""
        if not event_ids:
            return 0
        with self._write() as db:
            return db.executemany(
                "DELETE FROM outbox WHERE track_id IS NULL AND event_id = ?", [(e,) for e in event_ids]
            ).rowcount

    @staticmethod
    def _put_visits(db: sqlite3.Connection, visits: Sequence[VisitRow]) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO visits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (v.id, v.visitor_id, v.zone, v.camera, v.started, v.ended, v.tracks, int(v.returning), int(v.open))
                for v in visits
            ],
        )

    # -- reads --------------------------------------------------------------------------------

    def _visitor(self, row: tuple) -> VisitorRow:
        return VisitorRow(row[0], row[1], row[2], np.frombuffer(row[3], "<f8").astype(np.float64), row[4], row[5])

    def visitors(self) -> list[VisitorRow]:
        """Every visitor (within retention: older ones are purged), oldest first."""
        return [self._visitor(r) for r in self._read("SELECT * FROM visitors ORDER BY first_seen, id")]

    def visitor(self, visitor_id: str) -> VisitorRow | None:
        """One visitor, or None."""
        rows = self._read("SELECT * FROM visitors WHERE id = ?", (visitor_id,))
        return self._visitor(rows[0]) if rows else None

    def tracks(self, since: float | None = None, until: float | None = None) -> list[TrackRow]:
        """Tracks (with embeddings) that ended in [since, until], in time order."""
        rows = self._read(
            "SELECT * FROM tracks WHERE ended >= ? AND ended <= ? ORDER BY ended, camera, track_id",
            (since if since is not None else -1e18, until if until is not None else 1e18),
        )
        return [TrackRow(*r[:7], np.frombuffer(r[7], "<f4").astype(np.float32)) for r in rows]

    def visitor_tracks(self, visitor_id: str) -> list[TrackRow]:
        """A visitor's tracks, in time order."""
        rows = self._read("SELECT * FROM tracks WHERE visitor_id = ? ORDER BY ended", (visitor_id,))
        return [TrackRow(*r[:7], np.frombuffer(r[7], "<f4").astype(np.float32)) for r in rows]

    def visits(
        self,
        since: float | None = None,
        until: float | None = None,
        cameras: Sequence[str] = (),
        visitor_id: str | None = None,
        open_only: bool = False,
    ) -> list[VisitRow]:
        """Visits that started in [since, until], optionally of some cameras or zones, or of one visitor."""
        sql = "SELECT * FROM visits WHERE started >= ? AND started <= ?"
        params: list[Any] = [since if since is not None else -1e18, until if until is not None else 1e18]
        if cameras:
            marks = ",".join("?" * len(cameras))
            sql += f" AND (camera IN ({marks}) OR zone IN ({marks}))"
            params += [*cameras, *cameras]
        if visitor_id is not None:
            sql += " AND visitor_id = ?"
            params.append(visitor_id)
        if open_only:
            sql += " AND open = 1"
        rows = self._read(sql + " ORDER BY started, id", params)
        return [VisitRow(*r[:7], bool(r[7]), bool(r[8])) for r in rows]

    def opt_out_embeddings(self) -> tuple[list[str], np.ndarray]:
        """The opt-out list: (ids, embeddings)."""
        rows = self._read("SELECT id, embedding FROM opt_out ORDER BY created, id")
        vectors = [np.frombuffer(r[1], "<f4") for r in rows]
        matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, EMBEDDING_SIZE), np.float32)
        return [r[0] for r in rows], matrix

    def stats(self) -> dict[str, int]:
        """Row counts."""
        return {
            table: int(self._read(f"SELECT COUNT(*) FROM {table}")[0][0])
            for table in ("visitors", "tracks", "visits", "opt_out", "outbox")
        }

    # -- erasure ------------------------------------------------------------------------------

    def forget(self, visitor_id: str) -> bool:
        """Delete a visitor, its tracks (embeddings) and its visits for good; False if it is not there."""
        with self._write() as db:
            found = db.execute("SELECT 1 FROM visitors WHERE id = ?", (visitor_id,)).fetchone()
            found = found or db.execute("SELECT 1 FROM visits WHERE visitor_id = ?", (visitor_id,)).fetchone()
            found = found or db.execute("SELECT 1 FROM outbox WHERE visitor_id = ?", (visitor_id,)).fetchone()
            if not found:
                return False
            db.execute("DELETE FROM tracks WHERE visitor_id = ?", (visitor_id,))
            db.execute("DELETE FROM visits WHERE visitor_id = ?", (visitor_id,))
            db.execute("DELETE FROM outbox WHERE visitor_id = ?", (visitor_id,))
            db.execute("DELETE FROM visitors WHERE id = ?", (visitor_id,))
            self._bump(db, "forget", [visitor_id])
        self.checkpoint()
        return True

    def purge(self, now: float, retention_s: float, aggregate_retention_s: float) -> dict[str, Any]:
        """Delete what is past retention: every track that ended before ``now - retention_s``, its
        embedding taken out of its visitor's centroid too (a visitor who keeps coming back holds only
        the faces of the last ``retention_s``); visitors left without tracks, or last seen before the
        cut; visits that ended before ``now - aggregate_retention_s``.

        Returns the visitor ids deleted, those whose centroid changed, and counts. Not a change for
        the change log: the worker purges its own index with the same cut-off.
        """
        cut = now - retention_s
        with self._write() as db:
            expired: dict[str, list[np.ndarray]] = {}
            for visitor_id, blob in db.execute("SELECT visitor_id, embedding FROM tracks WHERE ended < ?", (cut,)):
                expired.setdefault(visitor_id, []).append(np.frombuffer(blob, "<f4").astype(np.float64))
            tracks = db.execute("DELETE FROM tracks WHERE ended < ?", (cut,)).rowcount
            gone = [r[0] for r in db.execute("SELECT id FROM visitors WHERE last_seen < ?", (cut,))]
            changed = []
            for visitor_id, vectors in expired.items():
                row = db.execute("SELECT centroid_sum, weight, tracks FROM visitors WHERE id = ?", (visitor_id,))
                found = row.fetchone()
                if found is None or visitor_id in gone:
                    continue
                weight = found[1] - len(vectors)
                if weight < 0.5:
                    gone.append(visitor_id)
                    continue
                total = np.frombuffer(found[0], "<f8") - np.sum(vectors, axis=0)
                db.execute(
                    "UPDATE visitors SET centroid_sum = ?, weight = ?, tracks = ? WHERE id = ?",
                    (_f64(total), weight, max(0, found[2] - len(vectors)), visitor_id),
                )
                changed.append(visitor_id)
            db.executemany("DELETE FROM visitors WHERE id = ?", [(v,) for v in gone])
            visits = db.execute(
                "DELETE FROM visits WHERE ended < ? AND open = 0", (now - aggregate_retention_s,)
            ).rowcount
            # A track's events go with the track (a replay after that counts it anew); owed events
            # never delivered go with the aggregates.
            events = db.execute(
                "DELETE FROM outbox WHERE (track_id IS NOT NULL AND at < ?) OR at < ?",
                (cut, now - aggregate_retention_s),
            ).rowcount
        if gone or tracks or visits or events:
            self.checkpoint()
        return {"visitors": gone, "changed": changed, "tracks": tracks, "visits": visits, "events": events}

    def relabel(
        self, mapping: dict[tuple[str, str], str], visitors: Sequence[VisitorRow], visits: dict[str, str]
    ) -> None:
        """Apply an offline re-clustering of every stored track: (camera, track_id) -> new visitor id,
        the visitors replaced by ``visitors``, and each old visitor's visits moved to ``visits[old]``."""
        with self._write() as db:
            for (camera, track_id), visitor_id in mapping.items():
                db.execute(
                    "UPDATE tracks SET visitor_id = ? WHERE camera = ? AND track_id = ?", (visitor_id, camera, track_id)
                )
            db.execute("CREATE TEMP TABLE IF NOT EXISTS moves (old TEXT PRIMARY KEY, new TEXT NOT NULL)")
            db.execute("DELETE FROM moves")
            db.executemany("INSERT INTO moves VALUES (?, ?)", list(visits.items()))
            db.execute(
                "UPDATE visits SET visitor_id = (SELECT new FROM moves WHERE old = visits.visitor_id) "
                "WHERE visitor_id IN (SELECT old FROM moves)"
            )
            db.execute(
                "UPDATE outbox SET visitor_id = (SELECT new FROM moves WHERE old = outbox.visitor_id) "
                "WHERE visitor_id IN (SELECT old FROM moves)"
            )
            db.execute("DELETE FROM visitors")
            db.executemany(
                "INSERT INTO visitors VALUES (?, ?, ?, ?, ?, ?)",
                [(v.id, v.first_seen, v.last_seen, _f64(v.centroid_sum), v.weight, v.tracks) for v in visitors],
            )
            self._bump(db, "relabel", [None])
        self.checkpoint()

    # -- opt-out ------------------------------------------------------------------------------

    def opt_out_add(self, embeddings: np.ndarray) -> str:
        """Add a person's face(s) to the opt-out list; returns the entry id (one id for all their faces)."""
        matrix = np.asarray(embeddings, dtype=np.float32).reshape(-1, EMBEDDING_SIZE)
        entry = uuid.uuid4().hex
        with self._write() as db:
            db.executemany(
                "INSERT INTO opt_out VALUES (?, ?, ?)",
                [(f"{entry}:{i}", _f32(v), time.time()) for i, v in enumerate(matrix)],
            )
            self._bump(db, "opt_out", [None])
        return entry

    def opt_out_remove(self, entry: str) -> int:
        """Delete an opt-out entry's faces for good; returns how many were deleted."""
        with self._write() as db:
            count = db.execute("DELETE FROM opt_out WHERE id LIKE ?", (f"{entry}:%",)).rowcount
            if count:
                self._bump(db, "opt_out", [None])
        if count:
            self.checkpoint()
        return count

    def opt_out_entries(self) -> list[tuple[str, int, float]]:
        """(entry id, faces, created) of each opt-out entry."""
        rows = self._read("SELECT id, created FROM opt_out ORDER BY created, id")
        entries: dict[str, list[float]] = {}
        for face_id, created in rows:
            entries.setdefault(face_id.split(":")[0], []).append(created)
        return [(entry, len(times), min(times)) for entry, times in entries.items()]
