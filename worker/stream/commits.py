"""The commit protocol: which Kafka offsets are safe to commit, and committing them.

At-least-once, with stable event ids. After a crash the worker resumes from the committed offset
with empty trackers; that replay rebuilds the same tracks (and so the same event ids) only if, at
the committed offset, no camera of that partition had a track open. Every frame goes through
these steps, in this order:

1. **Checkpoint lookup** (source thread, then the lane's face stage): a frame from Kafka is
   ``delivered`` to its partition's ``PartitionCheckpoints``; the face stage looks the partition
   up (``Commits.partition``) and, when the camera crossed a checkpoint boundary, closes its tracks
   there. Frames of files and RTSP cameras have no partition: every step is a no-op for them.
2. **Track born / closed / frame done** (the lane's decide stage, after the frame's events were
   handed to the sinks): ``track_born``, ``track_closed``, then ``done`` for the frame's offset.
3. **Flush** (the committing thread): every output that events or dead letters went to is
   flushed (sinks first, then the dead-letter producer); a failed message is re-sent a few times.
4. **Offset commit**: only when the flush delivered everything; the offset is the largest W
   such that every frame before W is done and no track spans W (born before W, closed at or after
   it, or still open).

A busy camera may never leave such a gap, so tracks are also closed at checkpoint boundaries:
every ``interval`` offsets of a partition, each camera closes its tracks before its first frame at
or past the boundary (the tracks count as closed at boundary - 1). Boundaries depend only on
offsets, so a replay closes tracks at the same places.

When flushing keeps failing (``max_failed_flushes`` commit rounds in a row), or frames done have
waited ``stall_after_s`` for a commit that keeps failing (outputs not delivering, or the broker
not answering), the commits are *stalled*: the worker then reports itself not live, so Kubernetes
restarts it and the replay from the last commit delivers what was lost. Nothing is committed past
an undelivered event. When the partitions of a failed round are revoked (a rebalance, a broker
that restarted), nothing is owed any more; the next rounds still re-send what failed, and once it
is delivered the failed rounds are forgotten, so readiness does not wait for new frames.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from worker.stream.frames import KafkaPosition

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]  # (topic, partition)


class Output(Protocol):
    """Something events or dead letters were sent to; a commit waits for it to deliver."""

    name: str

    def flush(self, timeout: float = 30.0) -> bool:
        """Deliver what was sent (re-sending failures); True when everything arrived."""
        ...

    @property
    def healthy(self) -> bool:
        """False while something sent failed and waits for the next flush to re-send it."""
        ...


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
            # A frame read before this bookkeeping began (the partition was reset) must not mark as done
            # an offset that the new log has not delivered yet.
            if self._last_delivered is not None and offset <= self._last_delivered:
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


class Commits:
    """The protocol for sources without offsets (files, RTSP): every step is a no-op."""

    @property
    def stalled(self) -> bool:
        """Whether commits can no longer advance (never, without offsets)."""
        return False

    def partition(self, position: KafkaPosition | None) -> PartitionCheckpoints | None:
        """Step 1: the bookkeeping of a frame's partition (None: nothing to commit for it)."""
        return None


class KafkaCommits(Commits):
    """The protocol for the Kafka frames topic: checkpoints per assigned partition, flush, commit."""

    def __init__(
        self,
        interval: int,
        outputs: Sequence[Output] = (),
        max_failed_flushes: int = 3,
        stall_after_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.outputs = list(outputs)
        self.max_failed_flushes = max_failed_flushes
        self.stall_after_s = stall_after_s
        self.failed_flushes = 0  # consecutive commit rounds whose flush failed
        self._clock = clock
        self._behind_since: float | None = None  # first failed round since the last commit that went through
        self._partitions: dict[PartitionKey, PartitionCheckpoints] = {}
        self._lock = threading.Lock()

    @property
    def stalled(self) -> bool:
        """Only a restart (and replay) helps: flushing failed too many rounds, or commits failed for too long."""
        return self.failed_flushes >= self.max_failed_flushes or self.behind_s >= self.stall_after_s

    @property
    def behind_s(self) -> float:
        """Seconds since frames done have been waiting for a commit that fails (0: commits go through)."""
        since = self._behind_since
        return 0.0 if since is None else self._clock() - since

    def _failed_round(self) -> None:
        if self._behind_since is None:
            self._behind_since = self._clock()

    def assigned(self, partitions: Iterable[PartitionKey]) -> None:
        """Partitions given to this worker: fresh bookkeeping (the consumer resumes at the committed offset)."""
        with self._lock:
            for key in partitions:
                self._partitions[key] = PartitionCheckpoints(self.interval)

    def revoked(self, partitions: Iterable[PartitionKey]) -> None:
        """Partitions taken away (after their last commit): forget them; their frames in flight commit nothing."""
        with self._lock:
            for key in partitions:
                self._partitions.pop(key, None)

    def delivered(self, position: KafkaPosition) -> PartitionCheckpoints | None:
        """Step 1, on the source thread: a message entered the worker (None if its partition was revoked)."""
        checkpoints = self.partition(position)
        if checkpoints is not None:
            checkpoints.delivered(position.offset)
        return checkpoints

    def partition(self, position: KafkaPosition | None) -> PartitionCheckpoints | None:
        if position is None:
            return None
        with self._lock:
            return self._partitions.get((position.topic, position.partition))

    def commit(
        self,
        commit_offsets: Callable[[dict[PartitionKey, int]], None],
        partitions: Iterable[PartitionKey] | None = None,
    ) -> bool:
        """Steps 3 and 4: flush every output, then commit each partition's safe offset.

        ``commit_offsets`` performs the commit (the consumer's); it raises to report failure.
        Returns True when there was nothing new to commit or the commit went through.
        """
        wanted_keys = None if partitions is None else set(partitions)
        with self._lock:
            wanted = {
                key: checkpoints
                for key, checkpoints in self._partitions.items()
                if wanted_keys is None or key in wanted_keys
            }
        offsets = {key: checkpoints.safe_offset() for key, checkpoints in wanted.items()}
        offsets = {key: offset for key, offset in offsets.items() if offset is not None}
        if not offsets:
            self._behind_since = None  # nothing owed
            # What failed belonged to partitions since revoked (a rebalance, a broker restart): nothing is owed,
            # but the failure must not hold readiness and liveness until new frames come. Re-send it.
            unsettled = self.failed_flushes or not all(output.healthy for output in self.outputs)
            if unsettled and all([output.flush() for output in self.outputs]):
                self.failed_flushes = 0
            return True
        failed = [output.name for output in self.outputs if not output.flush()]
        if failed:
            self.failed_flushes += 1
            self._failed_round()
            log.error(
                "not delivered by %s (round %d): offsets are not committed (at-least-once)",
                ", ".join(failed),
                self.failed_flushes,
            )
            return False
        self.failed_flushes = 0
        try:
            commit_offsets(offsets)
        except Exception as exc:  # kafka-python's commit errors: retried at the next interval
            self._failed_round()
            log.warning("commit failed (will retry; failing for %.0f s): %s", self.behind_s, exc)
            return False
        self._behind_since = None
        for key, offset in offsets.items():
            wanted[key].mark_committed(offset)
        return True
