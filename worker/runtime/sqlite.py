"""The SQLite file under each of facewatch's stores (the watchlist's, the visitors'): opened the same way.

The file is created owner-only (SQLite gives its -wal and -shm files the same permissions), in WAL
mode (readers never block the writer), ``synchronous=NORMAL`` (a killed process loses nothing
committed; a power cut may lose the last commits but never corrupts the file) and
``secure_delete=ON`` (deleted rows are overwritten, not left in free pages: face data is biometric).
One connection serves all of a store's threads, behind one lock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from worker.config import resolve_data_path
from worker.errors import FacewatchError


class SqliteFile:
    """The connection plumbing of a store. Subclasses name their ``error`` and ``label`` and call ``_connect``."""

    error: type[FacewatchError] = FacewatchError
    label = "store"
    path: Path
    _lock: threading.RLock
    _db: sqlite3.Connection | None

    def _connect(self, path: str | Path, default: str | Path, busy_timeout_ms: int) -> None:
        """Open (creating it owner-only) the file at ``path``; the folder of ``default`` is made when missing.

        Raises ``error`` for a missing folder or a file that cannot use WAL, sqlite3.DatabaseError for
        one that is no database.
        """
        self.path = Path(path).expanduser()
        self._lock = threading.RLock()
        self._db = None
        if self.path == resolve_data_path(Path(default)) and not self.path.parent.exists():
            self.path.parent.mkdir(mode=0o700, parents=True)  # ours to make; another path's folder may be a typo
        if not self.path.parent.exists():
            raise self.error(f"{self.label} {self.path}: folder {self.path.parent} does not exist")
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(
            str(self.path), timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
        )
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        mode = self._enter_wal(busy_timeout_ms / 1000)
        if mode.lower() != "wal":
            raise self.error(f"{self.label} {self.path}: cannot use WAL journal (got {mode})")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA secure_delete=ON")

    def _enter_wal(self, timeout_s: float) -> str:
        # Switching a fresh file to WAL takes an exclusive lock, and SQLite reports a clash with a
        # second process doing the same (or recovering the WAL index) as "locked" at once, without
        # calling the busy handler; so retry here for as long as the busy timeout allows.
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            try:
                return self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise self.error(f"{self.label} {self.path} is closed")
        return self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction; IMMEDIATE takes the write lock up front (no upgrade deadlock)."""
        with self._lock:
            db = self._conn
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()
