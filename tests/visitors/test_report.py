"""`facewatch visitors report` against a fixed event log (tests/visitors/data/visit_events.jsonl).

The log: visitor A comes three times (door: 09:10-09:20 and 14:00-14:05 on 2 March, 10:00-10:30
on 3 March), B once (09:30-09:31), C is still on the floor zone since 09:45, D once on 3 March
(10:15-10:17, delivered twice); plus a replayed visit_started after B's end, a track_ended and a
line that is not JSON.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from worker.cli.main import main
from worker.errors import FacewatchError
from worker.visitors.report import build_report, parse_since, visits_from_events

LOG = Path(__file__).parent / "data" / "visit_events.jsonl"
SINCE = datetime(2026, 3, 1, tzinfo=UTC)


def test_visits_are_rebuilt_from_the_log_once_each():
    bad: list[int] = []
    visits = visits_from_events(LOG.read_text().splitlines(), bad)
    assert bad == [10]  # the line that is not JSON; the track_ended is simply not a visit
    assert [v.id for v in visits] == ["visit-a1", "visit-b", "visit-c", "visit-a2", "visit-a3", "visit-d"]
    assert [v.open for v in visits] == [False, False, True, False, False, False]
    assert [round(v.dwell_s) for v in visits] == [600, 60, 0, 300, 1800, 120]


def test_report_counts_unique_and_returning_visitors_per_day_and_hour():
    report = build_report(visits_from_events(LOG.read_text().splitlines()), SINCE)
    assert (report["visits"], report["open_visits"], report["unique_visitors"], report["returning_visitors"]) == (
        6,
        1,
        4,
        1,
    )
    assert report["per_day"] == [
        {"period": "2026-03-02", "unique": 3, "returning": 1, "visits": 4},
        {"period": "2026-03-03", "unique": 2, "returning": 1, "visits": 2},
    ]
    assert report["per_hour"] == [
        {"period": "2026-03-02T09:00Z", "unique": 3, "returning": 0, "visits": 3},
        {"period": "2026-03-02T14:00Z", "unique": 1, "returning": 1, "visits": 1},
        {"period": "2026-03-03T10:00Z", "unique": 2, "returning": 1, "visits": 2},
    ]
    dwell = report["dwell"]
    assert (dwell["visits"], dwell["mean_s"], dwell["median_s"]) == (5, 576.0, 300.0)
    assert [b["visits"] for b in dwell["bins_s"]] == [0, 0, 1, 1, 1, 1, 0, 1, 0, 0]
    assert report["busiest_hours_utc"] == [9, 10, 14]


def test_report_of_one_zone_and_a_later_start():
    visits = visits_from_events(LOG.read_text().splitlines())
    floor = build_report(visits, SINCE, ["floor"])
    assert (floor["visits"], floor["open_visits"], floor["unique_visitors"], floor["dwell"]["visits"]) == (1, 1, 1, 0)
    later = build_report(visits, datetime(2026, 3, 3, tzinfo=UTC))
    assert (later["visits"], later["unique_visitors"], later["returning_visitors"]) == (2, 2, 1)


def test_cli_report_json_and_html(tmp_path, capsys):
    page = tmp_path / "report.html"
    assert (
        main(["visitors", "report", "--events", str(LOG), "--since", "2026-03-01", "--json", "--html", str(page)]) == 0
    )
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert "1 lines of" in captured.err and "(first: line 10); skipped" in captured.err
    assert (report["unique_visitors"], report["returning_visitors"]) == (4, 1)
    text = page.read_text()
    assert text.count('src="data:image/png;base64,') == 3 and "4 unique visitors, 1 returning" in text
    assert main(["visitors", "report", "--events", str(LOG), "--since", "2026-03-01", "--camera", "door"]) == 0
    out = capsys.readouterr().out
    assert "5 (0 open), 3 unique visitors, 1 returning" in out and "busiest hours (UTC): 09:00, 10:00, 14:00" in out


def test_since_spans_and_bad_values():
    now = datetime(2026, 3, 3, 12, tzinfo=UTC)
    assert parse_since("24h", now) == datetime(2026, 3, 2, 12, tzinfo=UTC)
    assert parse_since("2026-03-01T08:00", now) == datetime(2026, 3, 1, 8, tzinfo=UTC)
    with pytest.raises(FacewatchError, match="ISO time"):
        parse_since("yesterday", now)
