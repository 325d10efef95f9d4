"""The audit log: one JSON line per watchlist change and identify call, appended, rotated, kept for a while.

Each entry says who (a token's name, or the OS user of a CLI command), from where (the client's
address, or "cli"), when (UTC), what (the action and the identity it touched) and how it ended
(ok, denied, or the error). Never an embedding, a photo or a name: a name is personal data that
erasure must remove, and an append-only log cannot forget it; the identity id is enough to follow
a person's history while they are listed (and no longer identifies anyone once removed).

Append-only: the file is opened with O_APPEND and entries are never rewritten. Several processes
(the admin API and CLI commands) append to the same file; an exclusive ``flock`` around each write
and rotation keeps lines whole and rotation single. Rotation renames the full file to
``<path>.<UTC time>``; rotated files whose newest entry is older than ``retention_days`` are
deleted at the next rotation and when the admin API starts (``expire``).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.config import DEFAULT_STORE, Settings, resolve_data_path
from worker.errors import FacewatchError

DAY_S = 86_400.0


@dataclass(frozen=True)
class Actor:
    """Who makes a request, and from where."""

    who: str
    where: str


def cli_actor() -> Actor:
    """The actor of a CLI command: the OS user on this host."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container with an arbitrary uid)
        user = f"uid:{os.getuid()}"
    return Actor(f"user:{user}", "cli")


def audit_path(settings: Settings) -> Path:
    """The configured audit log, or the store's path + .audit.jsonl."""
    return settings.audit.path or Path(f"{settings.watchlist.store}.audit.jsonl")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends entries to the audit log file; thread-safe, and safe beside other processes."""

    def __init__(self, path: str | Path, max_bytes: int = 10 * 1024 * 1024, retention_days: float = 365.0) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.retention_s = retention_days * DAY_S
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditLog:
        """The log that ``settings`` configure (the default store's folder is made, as the store makes it)."""
        path = audit_path(settings)
        default_folder = resolve_data_path(DEFAULT_STORE).parent
        if path.parent == default_folder and not default_folder.exists():
            default_folder.mkdir(mode=0o700, parents=True)
        return cls(path, settings.audit.max_bytes, settings.audit.retention_days)

    def record(self, actor: Actor, action: str, outcome: str, identity: str | None = None, **details: Any) -> None:
        """Append one entry. ``details``: counts and flags only (never embeddings, photos or names)."""
        entry = {"time": _iso(time.time()), "who": actor.who, "from": actor.where, "action": action}
        if identity is not None:
            entry["identity"] = identity
        entry["outcome"] = outcome
        entry.update(details)
        line = (json.dumps(entry, separators=(",", ":"), ensure_ascii=True) + "\n").encode()
        with self._lock:
            try:
                descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise FacewatchError(f"audit log {self.path} cannot be written: {exc.strerror}") from None
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
                if os.fstat(descriptor).st_size + len(line) > self.max_bytes and self._rotate(descriptor):
                    os.close(descriptor)
                    descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                    fcntl.flock(descriptor, fcntl.LOCK_EX)
                os.write(descriptor, line)
            finally:
                os.close(descriptor)  # releases the lock

    def _rotate(self, descriptor: int) -> bool:
        """Rename the full log aside (if still the one at ``path``) and drop expired rotated logs."""
        try:
            same = os.path.samestat(os.fstat(descriptor), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if same:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            os.rename(self.path, self.path.with_name(f"{self.path.name}.{stamp}"))
        self.expire()
        return True

    def rotated(self) -> list[Path]:
        """The rotated files, oldest first."""
        return sorted(self.path.parent.glob(f"{self.path.name}.*"))

    def expire(self, now: float | None = None) -> list[Path]:
        """Delete rotated logs whose newest entry is older than the retention; returns them."""
        cutoff = (time.time() if now is None else now) - self.retention_s
        gone = []
        for path in self.rotated():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    gone.append(path)
            except FileNotFoundError:
                continue  # another process expired it first
        return gone

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every entry still kept, oldest first (rotated files, then the live one)."""
        for path in [*self.rotated(), self.path]:
            try:
                with path.open(encoding="utf-8") as handle:
                    for line in handle:
                        if line.endswith("\n"):  # a line being written by another process is skipped
                            yield json.loads(line)
            except FileNotFoundError:
                continue

    def query(
        self,
        since: str | None = None,
        until: str | None = None,
        who: str | None = None,
        action: str | None = None,
        identity: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Entries matching every filter given (times as ISO 8601 UTC prefixes compare as text); newest last."""
        found = [
            e
            for e in self.entries()
            if (since is None or e["time"] >= since)
            and (until is None or e["time"] < until)
            and (who is None or e["who"] == who)
            and (action is None or e["action"] == action)
            and (identity is None or e.get("identity") == identity)
        ]
        return found[-limit:] if limit else found
