"""Visits: a visitor's continuous presence in one zone (a camera, or a configured group of cameras).

A track of visitor V on a camera of zone Z extends V's open visit to Z when it starts at most
``gap_s`` after that visit's last track ended; otherwise the open visit ends and a new one starts.
Visits also end when ``gap_s`` passes with no track of theirs (``expire``), by event time: the
latest track end seen, advanced by the wall time since when the stream is idle (the caller's clock).
A visit's id is derived from its visitor, zone and first track, so a replay makes the same id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from worker.visitors.store import VisitRow

_NAMESPACE = uuid.UUID("0b5c1a43-7f3e-4d1a-9e55-3f0e6d2a8c11")


def visit_id(visitor_id: str, zone: str, camera: str, track_id: str) -> str:
    """Deterministic visit id from its visitor, zone and first track."""
    return str(uuid.uuid5(_NAMESPACE, f"{visitor_id}\x1f{zone}\x1f{camera}\x1f{track_id}"))


@dataclass(frozen=True)
class VisitChange:
    """What a track or the clock did to visits: ``ended`` closed, ``started`` opened, ``updated`` extended."""

    started: VisitRow | None = None
    updated: VisitRow | None = None
    ended: tuple[tuple[VisitRow, str], ...] = ()  # (visit, reason: gap, merged, shutdown)


class Visits:
    """The open visits of every visitor and zone; one caller at a time (the visitor stage)."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s
        self._open: dict[tuple[str, str], VisitRow] = {}

    def load(self, visit: VisitRow) -> None:
        """An open visit read back from the store at start."""
        self._open[(visit.visitor_id, visit.zone)] = visit

    def open_visits(self) -> list[VisitRow]:
        """The open visits."""
        return list(self._open.values())

    def expire(self, now: float) -> list[tuple[VisitRow, str]]:
        """Close every open visit whose last track ended more than ``gap_s`` before ``now``."""
        ended = []
        for key, visit in list(self._open.items()):
            if now - visit.ended > self.gap_s:
                del self._open[key]
                ended.append((replace(visit, open=False), "gap"))
        return ended

    def track(
        self, visitor_id: str, zone: str, camera: str, track_id: str, start: float, end: float, returning: bool
    ) -> VisitChange:
        """Count one track of ``visitor_id`` in ``zone``."""
        key = (visitor_id, zone)
        current = self._open.get(key)
        if current is not None and start - current.ended <= self.gap_s:
            extended = replace(
                current,
                started=min(current.started, start),
                ended=max(current.ended, end),
                tracks=current.tracks + 1,
            )
            self._open[key] = extended
            return VisitChange(updated=extended)
        ended: tuple[tuple[VisitRow, str], ...] = ()
        if current is not None:
            ended = ((replace(current, open=False), "gap"),)
        visit = VisitRow(
            visit_id(visitor_id, zone, camera, track_id), visitor_id, zone, camera, start, end, 1, returning, True
        )
        self._open[key] = visit
        return VisitChange(started=visit, ended=ended)

    def merge(self, survivor: str, absorbed: str) -> tuple[list[VisitRow], list[tuple[VisitRow, str]]]:
        """Visitor ``absorbed`` is now ``survivor``: its open visits move over; where both had one in a
        zone, they become one (the earlier visit's id) and the other ends with reason "merged".

        Returns (visits updated, visits ended).
        """
        updated: list[VisitRow] = []
        ended: list[tuple[VisitRow, str]] = []
        for (visitor, zone), visit in list(self._open.items()):
            if visitor != absorbed:
                continue
            del self._open[(visitor, zone)]
            other = self._open.get((survivor, zone))
            if other is None:
                moved = replace(visit, visitor_id=survivor)
                self._open[(survivor, zone)] = moved
                updated.append(moved)
                continue
            first, second = (other, visit) if (other.started, other.id) <= (visit.started, visit.id) else (visit, other)
            joined = replace(
                first,
                visitor_id=survivor,
                ended=max(first.ended, second.ended),
                tracks=first.tracks + second.tracks,
                returning=first.returning,
            )
            self._open[(survivor, zone)] = joined
            updated.append(joined)
            ended.append((replace(second, visitor_id=survivor, open=False), "merged"))
        return updated, ended

    def forget(self, visitor_id: str) -> int:
        """Erasure: drop a visitor's open visits (no event; the store deletes them)."""
        keys = [key for key in self._open if key[0] == visitor_id]
        for key in keys:
            del self._open[key]
        return len(keys)

    def close_all(self, reason: str) -> list[tuple[VisitRow, str]]:
        """End every open visit (shutdown)."""
        ended = [(replace(visit, open=False), reason) for visit in self._open.values()]
        self._open.clear()
        return ended
