"""Visits: the gap, expiry by event time, merges of two visitors' open visits, erasure; zones in the config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker.config import VisitorsConfig
from worker.visitors.visits import Visits, visit_id


def test_a_track_within_the_gap_extends_the_visit_and_one_after_it_starts_a_new_one():
    visits = Visits(gap_s=60)
    first = visits.track("v", "door", "cam", "t1", 0, 10, returning=False).started
    assert first is not None and first.id == visit_id("v", "door", "cam", "t1")
    extended = visits.track("v", "door", "cam", "t2", 60, 70, returning=True).updated  # 50 s after: same visit
    assert extended is not None and (extended.id, extended.tracks, extended.ended) == (first.id, 2, 70)
    later = visits.track("v", "door", "cam", "t3", 200, 210, returning=True)
    assert [(v.id, reason, v.open) for v, reason in later.ended] == [(first.id, "gap", False)]
    assert later.started is not None and later.started.returning
    other_zone = visits.track("v", "floor", "cam-2", "t4", 205, 206, returning=True)
    assert other_zone.started is not None and len(visits.open_visits()) == 2  # one visit per zone


def test_visits_expire_by_event_time():
    visits = Visits(gap_s=60)
    visits.track("a", "door", "cam", "t1", 0, 10, returning=False)
    visits.track("b", "door", "cam", "t2", 50, 100, returning=False)
    assert visits.expire(70) == []
    assert [(v.visitor_id, r) for v, r in visits.expire(71)] == [("a", "gap")]
    assert [v.visitor_id for v, _ in visits.close_all("shutdown")] == ["b"] and visits.open_visits() == []


def test_merged_visitors_open_visits_become_one():
    visits = Visits(gap_s=60)
    older = visits.track("a", "door", "cam", "t1", 0, 10, returning=False).started
    visits.track("b", "door", "cam-2", "t2", 5, 30, returning=False)
    visits.track("b", "floor", "cam-3", "t3", 40, 45, returning=False)
    updated, ended = visits.merge("a", "b")
    door = next(v for v in updated if v.zone == "door")
    assert (door.id, door.visitor_id, door.ended, door.tracks) == (older.id, "a", 30, 2)
    assert [(v.visitor_id, v.zone, r) for v, r in ended] == [("a", "door", "merged")]
    assert {(v.visitor_id, v.zone) for v in visits.open_visits()} == {("a", "door"), ("a", "floor")}
    assert visits.forget("a") == 2 and visits.open_visits() == []


def test_zones_must_be_disjoint_and_usable_as_labels():
    config = VisitorsConfig(zones={"entrance": ["door-1", "door-2"]})
    assert (config.zone_of("door-2"), config.zone_of("till-1")) == ("entrance", "till-1")
    with pytest.raises(ValidationError, match="is in zones 'a' and 'b'"):
        VisitorsConfig(zones={"a": ["cam"], "b": ["cam"]})
    with pytest.raises(ValidationError, match="letters, digits"):
        VisitorsConfig(zones={"front door": ["cam"]})
