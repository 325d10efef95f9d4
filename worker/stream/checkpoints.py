"""Which Kafka offset is safe to commit, so that a restart replays to the very same events.

At-least-once, with stable event ids: after a crash, the worker resumes from the committed
offset with empty trackers. That replay rebuilds the same tracks (and so the same event ids) only
if, at the committed offset, no camera of that partition had a track open. So the offset to
commit for a partition is the largest W such that:

- every frame delivered before W has been fully processed and its events handed to the sinks
  (the sinks are flushed before each commit);
- no track spans W: each track born at offset b and closed while processing offset e (its span
  is (b, e]) has W <= b or W > e; a track still open has W <= b.

A busy camera may never leave such a gap, so tracks are also closed at checkpoint boundaries:
every ``interval`` offsets of a partition, each camera closes its tracks before its first frame
at or past the boundary (the tracks count as closed at boundary - 1). Boundaries depend only on
offsets, so a replay closes tracks at the same places.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field


@dataclass
class PartitionCheckpoints:
    """Bookkeeping for one partition; thread-safe."""

    interval: int
    committed: int | None = None
    _pending: deque[int] = field(default_factory=deque)  # delivered, in order, not yet all-done prefix
    _done: set[int] = field(default_factory=set)
    _last_delivered: int | None = None
    _open: dict[str, int] = field(default_factory=dict)
    _closed: list[tuple[int, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def boundary_before(self, previous: int | None, offset: int) -> int | None:
        """The checkpoint boundary crossed between a camera's previous frame and this one, if any."""
        if previous is None or self.interval <= 0:
            return None
        boundary = (offset // self.interval) * self.interval
        return boundary if previous < boundary <= offset else None

    def delivered(self, offset: int) -> None:
        """A message of this partition entered the worker (called in offset order)."""
        with self._lock:
            self._pending.append(offset)
            self._last_delivered = offset

    def done(self, offset: int) -> None:
        """A message is fully processed: its events (if any) are with the sinks."""
        with self._lock:
            self._done.add(offset)

    def track_born(self, key: str, offset: int) -> None:
        with self._lock:
            self._open[key] = offset

    def track_closed(self, key: str, end_offset: int) -> None:
        with self._lock:
            born = self._open.pop(key, None)
            if born is not None and end_offset >= born:
                self._closed.append((born, end_offset))

    def safe_offset(self) -> int | None:
        """The offset to commit now (the next one a restart reads), or None when nothing new is safe."""
        with self._lock:
            while self._pending and self._pending[0] in self._done:
                self._done.discard(self._pending.popleft())
            if self._pending:
                candidate = self._pending[0]
            elif self._last_delivered is not None:
                candidate = self._last_delivered + 1
            else:
                return None
            candidate = min([candidate, *self._open.values()])
            moved = True
            while moved:  # step back before any closed track that spans the candidate
                moved = False
                for born, end in self._closed:
                    if born < candidate <= end:
                        candidate, moved = born, True
            if self.committed is not None and candidate <= self.committed:
                return None
            return candidate

    def mark_committed(self, offset: int) -> None:
        """Record a successful commit and forget the spans it made irrelevant."""
        with self._lock:
            self.committed = offset
            self._closed = [(born, end) for born, end in self._closed if end >= offset]
