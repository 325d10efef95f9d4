"""The watchlist store: identities and their face templates in one SQLite file.

Durability and concurrency:

- WAL journal, every change one ``BEGIN IMMEDIATE`` transaction: a process killed at any point
  leaves either the whole change or none of it, and readers in other processes never block the
  writer (the worker polls ``version`` while the CLI writes).
- ``busy_timeout`` makes a second writer wait for the first instead of failing.
- ``version`` is a single row read; every change bumps it by one in the same transaction and
  appends to the change log, which the FAISS index replays (``changes_since``).

Privacy: embeddings are biometric data. The change log keeps only identity ids and template ids,
never names, metadata or embeddings. ``secure_delete`` zeroes deleted content in the pages that
held it; but until a WAL checkpoint has copied those pages over the database file and emptied the
WAL, the old bytes are still on disk. A checkpoint cannot finish while another connection is in
the middle of a read, so every removal marks the store "erasure pending" (in the same transaction),
waits up to ``erasure_wait_s`` for readers, checkpoints (TRUNCATE), checks the files' bytes for
the removed embeddings and names (worker.watchlist.erasure), and only then clears the mark.
Whoever holds the store next retries a pending erasure (``finish_erasure``): the CLI's writing
commands and ``purge``, and the worker's reload loop.

Encryption at rest (optional, worker.watchlist.sealing): with a key, every name, metadata, photo
source and embedding is stored sealed with AES-256-GCM, bound to its row; ids, times, qualities,
model versions and the change log stay readable (the index and the replication need them). The
meta row ``key_id`` names the key: a store is opened only with that key, and a store holding
plaintext rows is refused a key rather than mixed (``rekey`` converts it, in one transaction).
Erasure then looks on disk for the removed ciphertexts, which are what the rows held.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.config import DEFAULT_STORE, WatchlistConfig
from worker.errors import UnknownIdentityError, WatchlistError
from worker.models.face_spec import EMBEDDING_SIZE, MODEL_VERSION
from worker.runtime.sqlite import SqliteFile
from worker.text import utf8_text
from worker.watchlist.erasure import Erasure, identity_needle, residue
from worker.watchlist.sealing import OVERHEAD, Sealer, associated_data, configured_key

log = logging.getLogger(__name__)

EMBEDDING_BYTES = EMBEDDING_SIZE * 4
SCHEMA_VERSION = 1
EXPORT_FORMAT = "facewatch-watchlist"
EXPORT_FORMAT_VERSION = 1
DEFAULT_MODEL_VERSION = MODEL_VERSION
BUSY_TIMEOUT_MS = 30_000
MAX_ID_LENGTH = 128
ERASURE_WAIT_S = 10.0  # config watchlist.erasure_wait_s

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS templates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL,
    source TEXT,
    quality REAL,
    model_version TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_identity ON templates(identity_id);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    version INTEGER NOT NULL,
    op TEXT NOT NULL,
    identity_id TEXT,
    template_ids TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_version ON changes(version);
"""


@dataclass(frozen=True)
class Identity:
    """A person on the watchlist."""

    id: str
    name: str
    metadata: dict[str, Any]
    created: float
    templates: int = 0


@dataclass(frozen=True)
class Template:
    """One face template (embedding) of an identity."""

    id: int
    identity_id: str
    embedding: np.ndarray
    source: str | None
    quality: float | None
    model_version: str
    created: float


@dataclass(frozen=True)
class Change:
    """One entry of the change log; several may share a version (one transaction)."""

    version: int
    op: str
    identity_id: str | None
    template_ids: tuple[int, ...]


def _as_embeddings(embeddings: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2 or matrix.shape[1] != EMBEDDING_SIZE:
        raise WatchlistError(f"embeddings must have shape (N, {EMBEDDING_SIZE}), got {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise WatchlistError("embeddings contain NaN or infinite values")
    return np.ascontiguousarray(matrix)


def private_file(path: str | Path, mode: str = "w") -> Any:
    """Create ``path`` afresh for writing, readable by its owner only (face templates are biometric data).

    Never writes through what was there before: a leftover file keeps its (maybe world-readable)
    mode if opened in place, and a planted symbolic link would redirect the templates. So whatever
    is at ``path`` is removed (a link itself, not its target) and the file is created exclusively.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags, 0o600)
    except FileExistsError:
        os.unlink(path)
        descriptor = os.open(path, flags, 0o600)
    return os.fdopen(descriptor, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def _blob(embedding: np.ndarray) -> bytes:
    return np.asarray(embedding, dtype="<f4").tobytes()


def _vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


class WatchlistStore(SqliteFile):
    """Identities and templates in a SQLite file; safe to share between threads and processes."""

    error = WatchlistError
    label = "watchlist store"

    def __init__(
        self,
        path: str | Path,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        erasure_wait_s: float = ERASURE_WAIT_S,
        key: bytes | None = None,
    ) -> None:
        self.erasure_wait_s = erasure_wait_s
        self._sealer = Sealer(key) if key is not None else None
        self._busy_timeout_ms = int(busy_timeout_ms)
        # Bytes of data this connection removed, searched for on disk until an erasure is verified.
        self._needles: set[bytes] = set()
        try:
            self._connect(path, DEFAULT_STORE, self._busy_timeout_ms)
            self._conn.execute("PRAGMA foreign_keys=ON")
            with self._write() as db:
                for statement in _SCHEMA.strip().split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                db.execute("INSERT OR IGNORE INTO meta VALUES ('version', '0')")
                self._check_key(db)
        except sqlite3.DatabaseError as exc:
            raise WatchlistError(f"watchlist store {self.path} cannot be opened: {exc}") from exc
        except WatchlistError:
            self.close()
            raise
        schema = self._meta("schema_version")
        if schema != str(SCHEMA_VERSION):
            raise WatchlistError(f"watchlist store {self.path} has schema version {schema}, expected {SCHEMA_VERSION}")
        for problem in self.exposure():
            log.warning("%s", problem)

    @classmethod
    def from_config(cls, config: WatchlistConfig) -> WatchlistStore:
        """The store the settings name, with their erasure wait and encryption key."""
        return cls(config.store, erasure_wait_s=config.erasure_wait_s, key=configured_key(config))

    @property
    def encrypted(self) -> bool:
        """Whether this store keeps its values sealed (it was opened with its key)."""
        return self._sealer is not None

    @property
    def key_id(self) -> str | None:
        """The public id of the store's encryption key (None: not encrypted)."""
        return self._sealer.key_id if self._sealer else None

    def _check_key(self, db: sqlite3.Connection) -> None:
        """Refuse a key that is not the store's, or a missing one; a fresh store takes the key it is given."""
        row = db.execute("SELECT value FROM meta WHERE key = 'key_id'").fetchone()
        stored = row[0] if row else None
        given = self._sealer.key_id if self._sealer else None
        if stored == given:
            return
        where = f"watchlist store {self.path}"
        if given is None:
            raise WatchlistError(
                f"{where} is encrypted (key id {stored}): set FACEWATCH_WATCHLIST__ENCRYPTION_KEY or "
                "watchlist.encryption_key_file"
            )
        if stored is not None:
            raise WatchlistError(f"{where} is encrypted with key id {stored}, the configured key has id {given}")
        if db.execute("SELECT 1 FROM identities LIMIT 1").fetchone():
            raise WatchlistError(
                f"{where} is not encrypted: encrypt it with `facewatch watchlist rekey --new-key-file FILE` "
                "run without an encryption key, then configure that key"
            )
        db.execute("INSERT INTO meta VALUES ('key_id', ?)", (given,))

    # -- sealing ----------------------------------------------------------------------------------

    def _seal(self, value: bytes, kind: str, identity_id: str, template_id: int | None = None) -> bytes:
        if self._sealer is None:
            return value
        return self._sealer.seal(value, associated_data(kind, identity_id, template_id))

    def _open(self, value: Any, kind: str, identity_id: str, template_id: int | None = None) -> bytes:
        if self._sealer is None:
            return value.encode("utf-8") if isinstance(value, str) else value
        row = f"template {template_id}" if template_id is not None else f"identity {identity_id!r}"
        what = f"watchlist store {self.path}: {kind} of {row}"
        return self._sealer.open(value, associated_data(kind, identity_id, template_id), what)

    def _text_in(self, text: str, kind: str, identity_id: str) -> str | bytes:
        return self._seal(text.encode("utf-8"), kind, identity_id) if self._sealer else text

    def _text_out(self, value: Any, kind: str, identity_id: str) -> str:
        return value if self._sealer is None else self._open(value, kind, identity_id).decode("utf-8")

    def _source_in(self, source: str | None, identity_id: str, template_id: int) -> str | bytes | None:
        if source is None or self._sealer is None:
            return source
        return self._seal(str(source).encode("utf-8"), "source", identity_id, template_id)

    def _source_out(self, value: Any, identity_id: str, template_id: int) -> str | None:
        if value is None or self._sealer is None:
            return value
        return self._open(value, "source", identity_id, template_id).decode("utf-8")

    def _embedding_out(self, value: bytes, identity_id: str, template_id: int) -> np.ndarray:
        return _vector(self._open(value, "embedding", identity_id, template_id))

    def exposure(self) -> list[str]:
        """The store's files that users other than the owner may read or write (biometric data)."""
        problems = []
        for path in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            try:
                mode = path.stat().st_mode & 0o777
            except FileNotFoundError:
                continue
            if mode & 0o077:
                problems.append(
                    f"watchlist file {path} has mode {mode:04o}: others can read biometric data; run chmod 600 on it"
                )
        return problems

    # -- plumbing (the connection itself: worker/runtime/sqlite.py) ----------------------------

    def _meta(self, key: str) -> str | None:
        rows = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchall()
        return rows[0][0] if rows else None

    def _bump(self, db: sqlite3.Connection, changes: Sequence[tuple[str, str | None, Sequence[int]]]) -> int:
        version = int(db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0]) + 1
        db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(version),))
        db.executemany(
            "INSERT INTO changes (version, op, identity_id, template_ids) VALUES (?, ?, ?, ?)",
            [(version, op, identity_id, json.dumps([int(t) for t in tids])) for op, identity_id, tids in changes],
        )
        if any(op.startswith("remove") for op, _, _ in changes):
            # In the removal's own transaction: a crash before the checkpoint leaves the mark behind.
            db.execute(
                "INSERT INTO meta VALUES ('erasure_pending', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(version),),
            )
        return version

    def _removed_bytes(
        self, db: sqlite3.Connection, identity_ids: Sequence[str], template_ids: Sequence[int]
    ) -> set[bytes]:
        """What the rows about to be deleted hold that must not stay on disk: names (with ids), embeddings.

        Sealed, the rows hold ciphertexts (each unique: a fresh nonce), and those are what is looked for.
        """
        needles: set[bytes] = set()
        for start in range(0, len(identity_ids), 500):
            chunk = list(identity_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = db.execute(f"SELECT id, name FROM identities WHERE id IN ({marks})", chunk)
            needles.update(name if isinstance(name, bytes) else identity_needle(iid, name) for iid, name in rows)
        removed = {int(t) for t in template_ids}
        for start in range(0, len(template_ids), 500):
            chunk = [int(t) for t in template_ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            needles.update(r[0] for r in db.execute(f"SELECT embedding FROM templates WHERE id IN ({marks})", chunk))
            # The same photo enrolled as two identities gives byte-identical embeddings: the one
            # that stays is not residue of the one removed.
            kept = db.execute(
                f"SELECT id, embedding FROM templates WHERE embedding IN "
                f"(SELECT embedding FROM templates WHERE id IN ({marks}))",
                chunk,
            )
            needles.difference_update(embedding for tid, embedding in kept if tid not in removed)
        return needles

    # -- reading ------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The store's version: bumped by every change, never decreases."""
        return int(self._read("SELECT value FROM meta WHERE key = 'version'")[0][0])

    @property
    def model_version(self) -> str | None:
        """The embedding model of the stored templates (None while there are none)."""
        rows = self._read("SELECT model_version FROM templates LIMIT 1")
        return rows[0][0] if rows else None

    def changes_since(self, version: int) -> list[Change]:
        """Changes made after ``version``, oldest first."""
        rows = self._read(
            "SELECT version, op, identity_id, template_ids FROM changes WHERE version > ? ORDER BY seq", (version,)
        )
        return [Change(v, op, iid, tuple(json.loads(tids))) for v, op, iid, tids in rows]

    def stats(self) -> dict[str, int]:
        """Counts of identities and templates, and the version."""
        identities = self._read("SELECT count(*) FROM identities")[0][0]
        templates = self._read("SELECT count(*) FROM templates")[0][0]
        return {"identities": int(identities), "templates": int(templates), "version": self.version}

    def _identity(self, row: tuple) -> Identity:
        identity_id, name, metadata, created, count = row
        name = self._text_out(name, "name", identity_id)
        metadata = json.loads(self._text_out(metadata, "metadata", identity_id))
        return Identity(identity_id, name, metadata, created, int(count))

    _IDENTITY_SQL = (
        "SELECT i.id, i.name, i.metadata, i.created, "
        "(SELECT count(*) FROM templates t WHERE t.identity_id = i.id) FROM identities i"
    )

    def get_identity(self, identity_id: str) -> Identity:
        """The identity with this id; UnknownIdentityError if there is none."""
        rows = self._read(self._IDENTITY_SQL + " WHERE i.id = ?", (identity_id,))
        if not rows:
            raise UnknownIdentityError(f"no identity with id {identity_id!r} in the watchlist")
        return self._identity(rows[0])

    def find_identity(self, identity_id: str) -> Identity | None:
        """The identity with this id, or None."""
        rows = self._read(self._IDENTITY_SQL + " WHERE i.id = ?", (identity_id,))
        return self._identity(rows[0]) if rows else None

    def identities_named(self, name: str) -> list[Identity]:
        """Every identity with exactly this name, oldest first."""
        return [
            self._identity(r) for r in self._read(self._IDENTITY_SQL + " WHERE i.name = ? ORDER BY i.created", (name,))
        ]

    def names(self, identity_ids: Iterable[str]) -> dict[str, str]:
        """Id -> name for those of ``identity_ids`` that exist (one query)."""
        ids = list(dict.fromkeys(identity_ids))
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._read(f"SELECT id, name FROM identities WHERE id IN ({marks})", chunk)
            found.update((iid, self._text_out(name, "name", iid)) for iid, name in rows)
        return found

    def list_identities(self) -> list[Identity]:
        """Every identity, by name then id."""
        if self._sealer is None:
            return [self._identity(row) for row in self._read(self._IDENTITY_SQL + " ORDER BY i.name, i.id")]
        # Sealed names sort as noise in SQL; binary order of their UTF-8 text is SQLite's order too.
        identities = [self._identity(row) for row in self._read(self._IDENTITY_SQL)]
        return sorted(identities, key=lambda i: (i.name.encode("utf-8"), i.id.encode("utf-8")))

    def templates(self, identity_id: str) -> list[Template]:
        """The templates of one identity, oldest first (empty for an unknown id)."""
        rows = self._read(
            "SELECT id, identity_id, embedding, source, quality, model_version, created FROM templates "
            "WHERE identity_id = ? ORDER BY id",
            (identity_id,),
        )
        return [
            Template(
                r[0], r[1], self._embedding_out(r[2], r[1], r[0]), self._source_out(r[3], r[1], r[0]), r[4], r[5], r[6]
            )
            for r in rows
        ]

    def all_templates(self, template_ids: Sequence[int] | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(template ids (N,) int64, identity ids, embeddings (N, 128) float32), for building an index.

        With ``template_ids``, only those of them that still exist.
        """
        if template_ids is None:
            rows = self._read("SELECT id, identity_id, embedding FROM templates ORDER BY id")
        else:
            rows = []
            ids = [int(t) for t in template_ids]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows += self._read(
                    f"SELECT id, identity_id, embedding FROM templates WHERE id IN ({marks}) ORDER BY id", chunk
                )
        tids = np.array([r[0] for r in rows], dtype=np.int64)
        blobs = b"".join(self._open(r[2], "embedding", r[1], r[0]) for r in rows)
        embeddings = np.frombuffer(blobs, dtype="<f4").astype(np.float32).reshape(len(rows), EMBEDDING_SIZE)
        return tids, [r[1] for r in rows], embeddings

    def snapshot(self) -> tuple[int, np.ndarray, list[str], np.ndarray]:
        """(version, template ids, identity ids, embeddings), read in one transaction so they agree."""
        with self._lock:
            db = self._conn
            db.execute("BEGIN")
            try:
                version = int(db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
                tids, iids, embeddings = self.all_templates()
            finally:
                db.execute("COMMIT")
        return version, tids, iids, embeddings

    # -- writing ------------------------------------------------------------------------------

    @staticmethod
    def _checked_identity(
        name: str, metadata: dict[str, Any] | None, identity_id: str | None
    ) -> tuple[str, str, dict[str, Any], str]:
        name = utf8_text(name or "").strip()  # argv and folder names may hold bytes that are not UTF-8
        if not name:
            raise WatchlistError("an identity needs a non-empty name")
        if metadata is not None and not isinstance(metadata, dict):
            raise WatchlistError("identity metadata must be a JSON object")
        identity_id = identity_id or str(uuid.uuid4())
        if not isinstance(identity_id, str) or not identity_id.strip() or len(identity_id) > MAX_ID_LENGTH:
            raise WatchlistError(f"invalid identity id {identity_id!r}: 1-{MAX_ID_LENGTH} characters")
        try:
            encoded = json.dumps(metadata or {})
        except (TypeError, ValueError) as exc:
            raise WatchlistError(f"identity metadata is not JSON-serialisable: {exc}") from exc
        return identity_id, name, metadata or {}, encoded

    @staticmethod
    def _checked_templates(
        embeddings: np.ndarray,
        sources: Sequence[str | None] | None,
        qualities: Sequence[float | None] | None,
    ) -> tuple[np.ndarray, list[str | None], list[float | None]]:
        matrix = _as_embeddings(embeddings)
        count = len(matrix)
        sources = [None if s is None else utf8_text(s) for s in sources] if sources is not None else [None] * count
        qualities = [None if q is None else float(q) for q in qualities] if qualities is not None else [None] * count
        if len(sources) != count or len(qualities) != count:
            raise WatchlistError("one source and one quality per embedding")
        return matrix, sources, qualities

    def _insert_templates(
        self,
        db: sqlite3.Connection,
        identity_id: str,
        templates: tuple[np.ndarray, list[str | None], list[float | None]],
        model_version: str,
    ) -> list[int]:
        stored = db.execute("SELECT model_version FROM templates LIMIT 1").fetchone()
        if stored and stored[0] != model_version:
            raise WatchlistError(
                f"templates of model {model_version!r} cannot join a watchlist of model {stored[0]!r} "
                "(distances between models mean nothing)"
            )
        created = time.time()
        return [
            self._insert_template(db, identity_id, _blob(embedding), source, quality, model_version, created)
            for embedding, source, quality in zip(*templates, strict=True)
        ]

    def _insert_template(
        self,
        db: sqlite3.Connection,
        identity_id: str,
        blob: bytes,
        source: str | None,
        quality: float | None,
        model_version: str,
        created: float,
    ) -> int:
        """One template row; sealed, its id is chosen first because the ciphertexts are bound to it."""
        if self._sealer is None:
            cursor = db.execute(
                "INSERT INTO templates (identity_id, embedding, source, quality, model_version, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (identity_id, blob, source, quality, model_version, created),
            )
            return int(cursor.lastrowid)
        # What AUTOINCREMENT would pick (inside the write transaction, so no one else picks it too).
        (tid,) = db.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'templates'), 0), "
            "coalesce((SELECT max(id) FROM templates), 0)) + 1"
        ).fetchone()
        db.execute(
            "INSERT INTO templates (id, identity_id, embedding, source, quality, model_version, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                tid,
                identity_id,
                self._seal(blob, "embedding", identity_id, tid),
                self._source_in(source, identity_id, tid),
                quality,
                model_version,
                created,
            ),
        )
        return int(tid)

    def _insert_identity(
        self, db: sqlite3.Connection, identity_id: str, name: str, metadata: str, created: float
    ) -> None:
        db.execute(
            "INSERT INTO identities VALUES (?, ?, ?, ?)",
            (
                identity_id,
                self._text_in(name, "name", identity_id),
                self._text_in(metadata, "metadata", identity_id),
                created,
            ),
        )

    def add_identity(
        self, name: str, metadata: dict[str, Any] | None = None, identity_id: str | None = None
    ) -> Identity:
        """Create an identity without templates (a new uuid unless ``identity_id`` is given)."""
        identity, _ = self.add_identity_with_templates(name, None, metadata, identity_id)
        return identity

    def add_identity_with_templates(
        self,
        name: str,
        embeddings: np.ndarray | None,
        metadata: dict[str, Any] | None = None,
        identity_id: str | None = None,
        sources: Sequence[str | None] | None = None,
        qualities: Sequence[float | None] | None = None,
        model_version: str = DEFAULT_MODEL_VERSION,
    ) -> tuple[Identity, list[int]]:
        """Create an identity and its templates in one transaction: a crash leaves both or neither."""
        identity_id, name, metadata, encoded = self._checked_identity(name, metadata, identity_id)
        templates = self._checked_templates(embeddings, sources, qualities) if embeddings is not None else None
        created = time.time()
        with self._write() as db:
            if db.execute("SELECT 1 FROM identities WHERE id = ?", (identity_id,)).fetchone():
                raise WatchlistError(f"identity id {identity_id!r} already exists")
            self._insert_identity(db, identity_id, name, encoded, created)
            changes: list[tuple[str, str | None, Sequence[int]]] = [("add_identity", identity_id, ())]
            ids = self._insert_templates(db, identity_id, templates, model_version) if templates else []
            if ids:
                changes.append(("add_templates", identity_id, ids))
            self._bump(db, changes)
        return Identity(identity_id, name, metadata, created, len(ids)), ids

    def replace_identity(
        self,
        identity_id: str,
        name: str,
        embeddings: np.ndarray | None,
        metadata: dict[str, Any] | None = None,
        sources: Sequence[str | None] | None = None,
        qualities: Sequence[float | None] | None = None,
        model_version: str = DEFAULT_MODEL_VERSION,
    ) -> tuple[Identity, list[int]]:
        """Replace (or create) an identity with exactly these templates, in one transaction.

        The old templates are deleted for good (as by ``remove_identity``); the change log gets a
        removal of the old template ids, then the additions.
        """
        identity_id, name, metadata, encoded = self._checked_identity(name, metadata, identity_id)
        templates = self._checked_templates(embeddings, sources, qualities) if embeddings is not None else None
        created = time.time()
        changes: list[tuple[str, str | None, Sequence[int]]] = []
        removed: set[bytes] = set()
        with self._write() as db:
            old = [r[0] for r in db.execute("SELECT id FROM templates WHERE identity_id = ?", (identity_id,))]
            if db.execute("SELECT 1 FROM identities WHERE id = ?", (identity_id,)).fetchone():
                removed = self._removed_bytes(db, [identity_id], old)
                db.execute("DELETE FROM templates WHERE identity_id = ?", (identity_id,))
                db.execute("DELETE FROM identities WHERE id = ?", (identity_id,))
                changes.append(("remove_identity", identity_id, old))
            self._insert_identity(db, identity_id, name, encoded, created)
            changes.append(("add_identity", identity_id, ()))
            ids = self._insert_templates(db, identity_id, templates, model_version) if templates else []
            if ids:
                changes.append(("add_templates", identity_id, ids))
            self._bump(db, changes)
        if changes[0][0] == "remove_identity":
            # What the new state holds again (same name, same template) is not residue.
            kept = {identity_needle(identity_id, name)} | ({_blob(e) for e in templates[0]} if templates else set())
            self._erase(removed - kept)
        return Identity(identity_id, name, metadata, created, len(ids)), ids

    def add_templates(
        self,
        identity_id: str,
        embeddings: np.ndarray,
        sources: Sequence[str | None] | None = None,
        qualities: Sequence[float | None] | None = None,
        model_version: str = DEFAULT_MODEL_VERSION,
    ) -> list[int]:
        """Add templates to an identity in one transaction; returns their ids."""
        templates = self._checked_templates(embeddings, sources, qualities)
        if not len(templates[0]):
            return []
        with self._write() as db:
            if not db.execute("SELECT 1 FROM identities WHERE id = ?", (identity_id,)).fetchone():
                raise UnknownIdentityError(f"no identity with id {identity_id!r} in the watchlist")
            ids = self._insert_templates(db, identity_id, templates, model_version)
            self._bump(db, [("add_templates", identity_id, ids)])
        return ids

    def update_identity(
        self, identity_id: str, name: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Identity:
        """Rename an identity and/or replace its metadata in one transaction (its templates stay)."""
        with self._write() as db:
            row = db.execute(self._IDENTITY_SQL + " WHERE i.id = ?", (identity_id,)).fetchone()
            if row is None:
                raise UnknownIdentityError(f"no identity with id {identity_id!r} in the watchlist")
            old = self._identity(row)
            _, new_name, new_metadata, encoded = self._checked_identity(
                old.name if name is None else name, old.metadata if metadata is None else metadata, identity_id
            )
            db.execute(
                "UPDATE identities SET name = ?, metadata = ? WHERE id = ?",
                (
                    self._text_in(new_name, "name", identity_id),
                    self._text_in(encoded, "metadata", identity_id),
                    identity_id,
                ),
            )
            self._bump(db, [("update_identity", identity_id, ())])
        return Identity(identity_id, new_name, new_metadata, old.created, old.templates)

    def remove_identity(self, identity_id: str) -> list[int]:
        """Delete an identity and all its templates for good; returns the removed template ids."""
        with self._write() as db:
            if not db.execute("SELECT 1 FROM identities WHERE id = ?", (identity_id,)).fetchone():
                raise UnknownIdentityError(f"no identity with id {identity_id!r} in the watchlist")
            tids = [r[0] for r in db.execute("SELECT id FROM templates WHERE identity_id = ?", (identity_id,))]
            removed = self._removed_bytes(db, [identity_id], tids)
            db.execute("DELETE FROM templates WHERE identity_id = ?", (identity_id,))
            db.execute("DELETE FROM identities WHERE id = ?", (identity_id,))
            self._bump(db, [("remove_identity", identity_id, tids)])
        self._erase(removed)
        return tids

    def remove_templates(self, template_ids: Sequence[int]) -> list[int]:
        """Delete templates by id; returns those that existed (unknown ids are ignored)."""
        ids = [int(t) for t in template_ids]
        if not ids:
            return []
        with self._write() as db:
            by_identity: dict[str, list[int]] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for tid, iid in db.execute(f"SELECT id, identity_id FROM templates WHERE id IN ({marks})", chunk):
                    by_identity.setdefault(iid, []).append(tid)
            removed = [t for tids in by_identity.values() for t in tids]
            needles = self._removed_bytes(db, [], removed)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                db.execute(f"DELETE FROM templates WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            if removed:
                self._bump(db, [("remove_templates", iid, tids) for iid, tids in by_identity.items()])
        if removed:
            self._erase(needles)
        return removed

    def checkpoint(self, wait_s: float | None = None) -> bool:
        """Copy the WAL into the database file and truncate it to nothing; False if readers kept it from finishing.

        Waits up to ``wait_s`` (default ``erasure_wait_s``) for other connections' reads and writes to end.
        """
        wait_ms = int(1000 * (self.erasure_wait_s if wait_s is None else wait_s))
        with self._lock:
            db = self._conn
            db.execute(f"PRAGMA busy_timeout={max(wait_ms, 0)}")
            try:
                busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.OperationalError as exc:  # "database is locked": a writer held on past the wait
                log.debug("watchlist store %s: checkpoint failed: %s", self.path, exc)
                busy = 1
            finally:
                db.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        return not busy

    @property
    def erasure_pending(self) -> int | None:
        """The version of the latest removal whose data may still be on disk; None when every erasure is verified."""
        value = self._read("SELECT value FROM meta WHERE key = 'erasure_pending'")
        return int(value[0][0]) if value else None

    def _erase(self, needles: set[bytes]) -> Erasure:
        with self._lock:
            self._needles |= needles
        erasure = self.finish_erasure()
        if not erasure.complete:
            log.warning("watchlist store: %s; it will be retried", erasure.detail)
        return erasure

    def finish_erasure(self, wait_s: float | None = None) -> Erasure:
        """Checkpoint the removed data out of the WAL and the file, check the bytes, and clear the pending mark.

        Waits up to ``wait_s`` (default ``erasure_wait_s``) for other connections' reads. When they
        outlast it, or removed bytes are still found, the erasure stays pending: retry later. Bytes
        are checked for the removals this connection made; another process's removal is verified by
        the checkpoint having emptied the WAL.
        """
        with self._lock:  # one erasure at a time per connection: the needles are shared
            return self._finish_erasure(wait_s)

    def _finish_erasure(self, wait_s: float | None) -> Erasure:
        pending = self.erasure_pending
        if pending is None and not self._needles:
            return Erasure(True, "nothing to erase")
        wait = self.erasure_wait_s if wait_s is None else wait_s
        if not self.checkpoint(wait):
            detail = (
                f"erasure pending: another connection's read kept the WAL checkpoint of {self.path} from finishing "
                f"within {wait:g} s, so removed data is still in the file or its -wal"
            )
            return Erasure(False, detail)
        left = residue([self.path, Path(f"{self.path}-wal")], sorted(self._needles))
        if left:
            detail = f"erasure pending: {len(left)} removed value(s) still found in {self.path} after the checkpoint"
            log.error("watchlist store: %s", detail)
            return Erasure(False, detail)
        self._needles.clear()
        if pending is not None:
            with self._write() as db:
                # A removal committed after the checkpoint keeps its own mark (its version is higher).
                db.execute("DELETE FROM meta WHERE key = 'erasure_pending' AND CAST(value AS INTEGER) <= ?", (pending,))
            self.checkpoint(0)  # the mark's own page: it holds nothing removed, so no need to wait
        return Erasure(True, "removed data checkpointed out of the WAL and not found in the files")

    # -- replication outbox ---------------------------------------------------------------------

    def published_version(self, topic: str) -> int:
        """The store version up to which every change has been published to ``topic`` (0: none yet)."""
        rows = self._read("SELECT value FROM meta WHERE key = ?", (f"published:{topic}",))
        return int(rows[0][0]) if rows else 0

    def mark_published(self, topic: str, version: int) -> None:
        """Record that every change up to ``version`` is on ``topic`` (the cursor never moves back)."""
        with self._write() as db:
            db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value "
                "WHERE CAST(meta.value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                (f"published:{topic}", str(int(version))),
            )

    # -- integrity, export, restore --------------------------------------------------------------

    def verify(self) -> list[str]:
        """Problems found (empty when healthy): integrity, foreign keys, template shapes, models, file modes."""
        problems = [r[0] for r in self._read("PRAGMA integrity_check") if r[0] != "ok"]
        problems += [f"template {r[1]} points at a missing identity" for r in self._read("PRAGMA foreign_key_check")]
        size = EMBEDDING_BYTES + (OVERHEAD if self._sealer else 0)
        bad = self._read("SELECT id FROM templates WHERE length(embedding) != ?", (size,))
        problems += [f"template {r[0]} has an embedding of the wrong size" for r in bad]
        if self._sealer is not None:
            problems += self._unsealable()
        models = [r[0] for r in self._read("SELECT DISTINCT model_version FROM templates")]
        if len(models) > 1:
            problems.append(f"templates of several models: {', '.join(models)}")
        return problems + self.exposure()

    def _unsealable(self) -> list[str]:
        """Sealed values that do not open with the store's key (tampered with, moved between rows, foreign)."""
        problems = []
        for iid, name, metadata in self._read("SELECT id, name, metadata FROM identities"):
            for kind, value in (("name", name), ("metadata", metadata)):
                try:
                    self._open(value, kind, iid)
                except WatchlistError as exc:
                    problems.append(str(exc))
        for tid, iid, embedding, source in self._read("SELECT id, identity_id, embedding, source FROM templates"):
            try:
                self._open(embedding, "embedding", iid, tid)
                self._source_out(source, iid, tid)
            except WatchlistError as exc:
                problems.append(str(exc))
        return problems

    def rekey(self, new_key: bytes | None) -> dict[str, Any]:
        """Re-seal every value with ``new_key`` (None: store them in plaintext) in one transaction.

        Opening the store proved the current key. The old values (ciphertexts, or plaintext when the
        store was not encrypted) are then erased like removed data: checkpointed out of the WAL and
        looked for in the files (``erasure`` in the result says whether that is verified yet).
        """
        new = Sealer(new_key) if new_key is not None else None
        previous = self._sealer
        with self._write() as db:
            identities = db.execute("SELECT id, name, metadata FROM identities").fetchall()
            templates = db.execute("SELECT id, identity_id, embedding, source FROM templates").fetchall()
            needles = self._removed_bytes(db, [r[0] for r in identities], [r[0] for r in templates])
            plain_identities = [
                (iid, self._text_out(name, "name", iid), self._text_out(metadata, "metadata", iid))
                for iid, name, metadata in identities
            ]
            plain_templates = [
                (tid, iid, self._open(blob, "embedding", iid, tid), self._source_out(source, iid, tid))
                for tid, iid, blob, source in templates
            ]
            self._sealer = new
            try:
                db.executemany(
                    "UPDATE identities SET name = ?, metadata = ? WHERE id = ?",
                    [
                        (self._text_in(name, "name", iid), self._text_in(metadata, "metadata", iid), iid)
                        for iid, name, metadata in plain_identities
                    ],
                )
                db.executemany(
                    "UPDATE templates SET embedding = ?, source = ? WHERE id = ?",
                    [
                        (self._seal(blob, "embedding", iid, tid), self._source_in(source, iid, tid), tid)
                        for tid, iid, blob, source in plain_templates
                    ],
                )
                db.execute("DELETE FROM meta WHERE key = 'key_id'")
                if new is not None:
                    db.execute("INSERT INTO meta VALUES ('key_id', ?)", (new.key_id,))
                if needles:
                    # In the same transaction: a crash before the checkpoint leaves the mark, and the retry.
                    version = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0]
                    db.execute(
                        "INSERT INTO meta VALUES ('erasure_pending', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (version,),
                    )
            except BaseException:
                self._sealer = previous
                raise
        erasure = self._erase(needles) if needles else Erasure(True, "nothing to erase")
        return {
            "identities": len(identities),
            "templates": len(templates),
            "key_id": new.key_id if new else None,
            "erasure": "complete" if erasure.complete else "pending",
        }

    def export(self, path: str | Path) -> dict[str, int]:
        """Write every identity and template to a JSON-lines file; returns the counts.

        Line 1 is a header (format, format version, model version, counts); then one line per
        identity with its templates, embeddings as base64 of little-endian float32 (exact).
        The file is biometric data: keep it as safe as the store.
        """
        path = Path(path)
        with self._lock:
            # One read transaction, so the export is a consistent snapshot.
            db = self._conn
            db.execute("BEGIN")
            try:
                identities = db.execute(
                    "SELECT id, name, metadata, created FROM identities ORDER BY created, id"
                ).fetchall()
                templates = db.execute(
                    "SELECT id, identity_id, embedding, source, quality, model_version, created FROM templates "
                    "ORDER BY id"
                ).fetchall()
            finally:
                db.execute("COMMIT")
        by_identity: dict[str, list[dict[str, Any]]] = {}
        models = set()
        for tid, iid, blob, source, quality, model, created in templates:
            models.add(model)
            by_identity.setdefault(iid, []).append(
                {
                    "embedding": base64.b64encode(self._open(blob, "embedding", iid, tid)).decode("ascii"),
                    "source": self._source_out(source, iid, tid),
                    "quality": quality,
                    "model_version": model,
                    "created": created,
                }
            )
        if len(models) > 1:
            raise WatchlistError(f"cannot export a watchlist with templates of several models: {sorted(models)}")
        header = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_FORMAT_VERSION,
            "model_version": next(iter(models)) if models else DEFAULT_MODEL_VERSION,
            "identities": len(identities),
            "templates": len(templates),
        }
        temporary = path.with_name(path.name + ".tmp")
        with private_file(temporary) as out:
            out.write(json.dumps(header) + "\n")
            for iid, name, metadata, created in identities:
                record = {
                    "id": iid,
                    "name": self._text_out(name, "name", iid),
                    "metadata": json.loads(self._text_out(metadata, "metadata", iid)),
                    "created": created,
                    "templates": by_identity.get(iid, []),
                }
                out.write(json.dumps(record) + "\n")
        temporary.replace(path)
        return {"identities": len(identities), "templates": len(templates)}

    def restore(self, path: str | Path, model_version: str | None = None) -> dict[str, int]:
        """Replace the whole watchlist with an export file, atomically; returns the counts.

        Refuses (WatchlistError, store untouched) a file that is not a facewatch export, is
        truncated or malformed, or holds templates of another model than ``model_version``
        (default: the store's own model, or dlib's ResNet for an empty store).
        """
        path = Path(path)
        expected = model_version or self.model_version or DEFAULT_MODEL_VERSION
        identities = list(_read_export(path, expected))
        with self._write() as db:
            old = db.execute("SELECT id FROM identities").fetchall()
            changes: list[tuple[str, str | None, Sequence[int]]] = []
            removed: set[bytes] = set()
            for (iid,) in old:
                tids = [r[0] for r in db.execute("SELECT id FROM templates WHERE identity_id = ?", (iid,))]
                changes.append(("remove_identity", iid, tids))
                removed |= self._removed_bytes(db, [iid], tids)
            db.execute("DELETE FROM templates")
            db.execute("DELETE FROM identities")
            count = 0
            for record in identities:
                self._insert_identity(
                    db, record["id"], record["name"], json.dumps(record["metadata"]), record["created"]
                )
                changes.append(("add_identity", record["id"], ()))
                tids = [
                    self._insert_template(
                        db,
                        record["id"],
                        template["blob"],
                        template.get("source"),
                        template.get("quality"),
                        expected,
                        template.get("created") or time.time(),
                    )
                    for template in record["templates"]
                ]
                count += len(tids)
                if tids:
                    changes.append(("add_templates", record["id"], tids))
            self._bump(db, changes)
        if old:
            kept = {identity_needle(r["id"], r["name"]) for r in identities}
            kept |= {t["blob"] for r in identities for t in r["templates"]}
            self._erase(removed - kept)
        return {"identities": len(identities), "templates": count}


def _read_export(path: Path, expected_model: str) -> Iterator[dict[str, Any]]:
    """Validated identity records of an export file (each template with its ``blob``)."""
    where = f"watchlist export {path}"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise WatchlistError(f"{where} cannot be read: {exc}") from exc
    if not lines:
        raise WatchlistError(f"{where} is empty")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise WatchlistError(f"{where}: line 1 is not a facewatch export header ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise WatchlistError(f"{where}: line 1 is not a facewatch export header")
    if header.get("format_version") != EXPORT_FORMAT_VERSION:
        raise WatchlistError(
            f"{where}: format version {header.get('format_version')!r} (this facewatch reads {EXPORT_FORMAT_VERSION})"
        )
    if header.get("model_version") != expected_model:
        raise WatchlistError(
            f"{where}: templates of model {header.get('model_version')!r}, this watchlist uses {expected_model!r}; "
            "re-enroll the photos instead"
        )
    records = []
    seen: set[str] = set()
    templates = 0
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            identity_id, name = record["id"], record["name"]
            metadata = record.get("metadata") or {}
            if not isinstance(identity_id, str) or not identity_id or not isinstance(name, str) or not name.strip():
                raise ValueError("id and name must be non-empty strings")
            if not isinstance(metadata, dict):
                raise ValueError("metadata must be an object")
            if identity_id in seen:
                raise ValueError(f"identity {identity_id!r} appears twice")
            seen.add(identity_id)
            checked = []
            for template in record.get("templates", []):
                blob = base64.b64decode(template["embedding"], validate=True)
                if len(blob) != EMBEDDING_BYTES:
                    raise ValueError(f"an embedding has {len(blob)} bytes, expected {EMBEDDING_BYTES}")
                if not np.isfinite(np.frombuffer(blob, dtype="<f4")).all():
                    raise ValueError("an embedding holds NaN or infinite values")
                if template.get("model_version", expected_model) != expected_model:
                    raise ValueError(f"a template of model {template.get('model_version')!r}")
                quality = template.get("quality")
                checked.append(
                    {
                        "blob": blob,
                        "source": template.get("source"),
                        "quality": None if quality is None else float(quality),
                        "created": float(template.get("created") or time.time()),
                    }
                )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise WatchlistError(f"{where}: line {number} is malformed ({exc}); nothing was restored") from exc
        templates += len(checked)
        records.append(
            {
                "id": identity_id,
                "name": name,
                "metadata": metadata,
                "created": float(record.get("created") or time.time()),
                "templates": checked,
            }
        )
    if header.get("identities") not in (None, len(records)) or header.get("templates") not in (None, templates):
        raise WatchlistError(
            f"{where}: header announces {header.get('identities')} identities / {header.get('templates')} templates, "
            f"file holds {len(records)} / {templates} (truncated?); nothing was restored"
        )
    return iter(records)
