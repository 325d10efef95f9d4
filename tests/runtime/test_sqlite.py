"""The SQLite file under every store: owner-only, WAL, secure delete, clear errors."""

from __future__ import annotations

import stat

import pytest

from worker.errors import FacewatchError
from worker.runtime.sqlite import SqliteFile


class _Notes(SqliteFile):
    label = "notes store"

    def __init__(self, path, default="unused-default.db") -> None:
        self._connect(path, default, busy_timeout_ms=2000)
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS notes (text TEXT)")


def test_a_new_file_is_owner_only_in_wal_mode_with_secure_delete(tmp_path):
    with _Notes(tmp_path / "notes.db") as notes:
        assert stat.S_IMODE((tmp_path / "notes.db").stat().st_mode) == 0o600
        assert notes._read("PRAGMA journal_mode")[0][0] == "wal"
        assert notes._read("PRAGMA secure_delete")[0][0] == 1
        assert notes._read("PRAGMA synchronous")[0][0] == 1  # NORMAL
        with notes._write() as db:
            db.execute("INSERT INTO notes VALUES ('kept')")
        with pytest.raises(RuntimeError), notes._write() as db:
            db.execute("INSERT INTO notes VALUES ('rolled back')")
            raise RuntimeError("the transaction fails")
        assert notes._read("SELECT text FROM notes") == [("kept",)]
    with pytest.raises(FacewatchError, match=r"notes store .* is closed"):
        notes._read("SELECT 1")
    notes.close()  # idempotent


def test_a_missing_folder_is_an_error_unless_it_is_the_default_one(tmp_path, monkeypatch):
    with pytest.raises(FacewatchError, match=r"folder .*nowhere does not exist"):
        _Notes(tmp_path / "nowhere" / "notes.db")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = tmp_path / "home" / "facewatch" / "notes.db"
    with _Notes(default, default="~/facewatch/notes.db"):
        assert default.is_file() and stat.S_IMODE(default.parent.stat().st_mode) == 0o700
