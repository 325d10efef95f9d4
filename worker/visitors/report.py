"""Visit reports: unique and returning visitors per hour and day, dwell distribution, busiest hours.

Input is a list of visits, read from the visitor store or rebuilt from a log of visit events
(``visits_from_events``), so a report can be made wherever the events went. Hours and days are
UTC. A visitor counts once per hour (or day) however many visits it made in it; "returning" is a
visitor whose visit in that hour or day was not its first (within visitors.retention_hours).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np

from worker.errors import FacewatchError
from worker.visitors.store import VisitRow

DWELL_BINS_S = (0, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO date or time (UTC unless it says otherwise), or a span back from now: 30m, 24h, 7d."""
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([mhd])", text.strip())
    if match:
        value, unit = float(match.group(1)), match.group(2)
        return now - timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: value})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise FacewatchError(f"--since {text!r}: give an ISO time (2026-12-01T08:00) or a span (30m, 24h, 7d)") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def visits_from_events(lines: Iterable[str], bad_lines: list[int] | None = None) -> list[VisitRow]:
    """Visits rebuilt from JSON lines of events. Other kinds of event are skipped; so are lines that
    are not JSON objects or not valid visit events, whose numbers go to ``bad_lines``."""
    visits: dict[str, VisitRow] = {}
    for number, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError("not an object")
            if event.get("type") not in ("visit_started", "visit_ended"):
                continue
            started = datetime.fromisoformat(event["started_at"]).timestamp()
            done = event["type"] == "visit_ended"
            visit = VisitRow(
                event["visit_id"],
                event["visitor_id"],
                event["zone"],
                event["camera_id"],
                started,
                datetime.fromisoformat(event["ended_at"]).timestamp() if done else started,
                int(event.get("tracks", 1)),
                bool(event["returning"]),
                not done,
            )
        except (ValueError, KeyError, TypeError):
            if line.strip() and bad_lines is not None:
                bad_lines.append(number)
            continue
        known = visits.get(visit.id)
        if known is not None and not known.open and visit.open:
            continue  # a replayed visit_started after its end
        visits[visit.id] = visit
    return sorted(visits.values(), key=lambda v: (v.started, v.id))


def _hour(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:00Z")


def _day(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d")


def _per(visits: Sequence[VisitRow], bucket) -> list[dict]:
    rows: dict[str, dict] = {}
    for visit in visits:
        row = rows.setdefault(bucket(visit.started), {"visitors": set(), "returning": set(), "visits": 0})
        row["visitors"].add(visit.visitor_id)
        row["visits"] += 1
        if visit.returning:
            row["returning"].add(visit.visitor_id)
    return [
        {"period": key, "unique": len(r["visitors"]), "returning": len(r["returning"]), "visits": r["visits"]}
        for key, r in sorted(rows.items())
    ]


def build_report(visits: Sequence[VisitRow], since: datetime | None = None, cameras: Sequence[str] = ()) -> dict:
    """The report of the visits that started at or after ``since``, of ``cameras`` (or zones), as plain data."""
    chosen = [
        v
        for v in visits
        if (since is None or v.started >= since.timestamp())
        and (not cameras or v.camera in cameras or v.zone in cameras)
    ]
    closed = np.array([v.dwell_s for v in chosen if not v.open], dtype=np.float64)
    counts, _ = (
        np.histogram(closed, bins=[*DWELL_BINS_S, np.inf]) if len(closed) else (np.zeros(len(DWELL_BINS_S)), None)
    )
    by_hour_of_day = np.bincount([datetime.fromtimestamp(v.started, tz=UTC).hour for v in chosen], minlength=24).astype(
        int
    )
    busiest = [int(h) for h in np.argsort(-by_hour_of_day, kind="stable")[:3] if by_hour_of_day[h] > 0]
    visitors = {v.visitor_id for v in chosen}
    returning = {v.visitor_id for v in chosen if v.returning}
    return {
        "since": since.isoformat() if since else None,
        "cameras": list(cameras),
        "visits": len(chosen),
        "open_visits": sum(v.open for v in chosen),
        "unique_visitors": len(visitors),
        "returning_visitors": len(returning),
        "per_hour": _per(chosen, _hour),
        "per_day": _per(chosen, _day),
        "dwell": {
            "visits": len(closed),
            "mean_s": float(closed.mean()) if len(closed) else None,
            "median_s": float(np.median(closed)) if len(closed) else None,
            "p90_s": float(np.percentile(closed, 90)) if len(closed) else None,
            "bins_s": [
                {"from_s": lo, "to_s": hi, "visits": int(n)}
                for lo, hi, n in zip(DWELL_BINS_S, [*DWELL_BINS_S[1:], None], counts, strict=True)
            ],
        },
        "visits_by_hour_of_day": by_hour_of_day.tolist(),
        "busiest_hours_utc": busiest,
    }


def format_text(report: dict) -> str:
    """The report as text for a terminal."""
    lines = [
        f"visits since {report['since'] or 'the start'}"
        + (f" on {', '.join(report['cameras'])}" if report["cameras"] else "")
        + f": {report['visits']} ({report['open_visits']} open), {report['unique_visitors']} unique visitors, "
        f"{report['returning_visitors']} returning",
        "",
        f"{'day':<12} {'unique':>7} {'returning':>10} {'visits':>7}",
    ]
    lines += [f"{r['period']:<12} {r['unique']:>7} {r['returning']:>10} {r['visits']:>7}" for r in report["per_day"]]
    lines += ["", f"{'hour (UTC)':<18} {'unique':>7} {'returning':>10} {'visits':>7}"]
    lines += [f"{r['period']:<18} {r['unique']:>7} {r['returning']:>10} {r['visits']:>7}" for r in report["per_hour"]]
    dwell = report["dwell"]
    lines += ["", f"dwell of {dwell['visits']} ended visits:"]
    if dwell["visits"]:
        lines.append(f"  mean {dwell['mean_s']:.0f} s, median {dwell['median_s']:.0f} s, p90 {dwell['p90_s']:.0f} s")
        for b in dwell["bins_s"]:
            upper = f"{b['to_s']} s" if b["to_s"] is not None else "more"
            lines.append(f"  {b['from_s']:>5} s - {upper:<8} {b['visits']:>6}")
    busiest = ", ".join(f"{h:02d}:00" for h in report["busiest_hours_utc"]) or "-"
    lines += ["", f"busiest hours (UTC): {busiest}"]
    return "\n".join(lines) + "\n"


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def format_html(report: dict) -> str:
    """A self-contained HTML page: the figures, and PNG plots inlined (no external files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    figure, axis = plt.subplots(figsize=(8, 3))
    days = report["per_day"]
    x = np.arange(len(days))
    axis.bar(x - 0.2, [d["unique"] for d in days], 0.4, label="unique")
    axis.bar(x + 0.2, [d["returning"] for d in days], 0.4, label="returning")
    axis.set_xticks(x, [d["period"] for d in days], rotation=45, ha="right")
    axis.set_title("Visitors per day (UTC)")
    axis.legend()
    plots.append(_png(figure))
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(8, 3))
    axis.bar(range(24), report["visits_by_hour_of_day"])
    axis.set_xticks(range(0, 24, 2))
    axis.set_title("Visits by hour of day (UTC)")
    plots.append(_png(figure))
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(8, 3))
    bins = report["dwell"]["bins_s"]
    axis.bar(range(len(bins)), [b["visits"] for b in bins])
    axis.set_xticks(range(len(bins)), [f">= {b['from_s']} s" for b in bins], rotation=45, ha="right")
    axis.set_title("Dwell time of ended visits")
    plots.append(_png(figure))
    plt.close(figure)
    images = "\n".join(f'<img alt="plot" src="data:image/png;base64,{p}">' for p in plots)
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>facewatch visitors</title></head><body>\n"
        f"<h1>facewatch visitors</h1>\n<pre>{html.escape(format_text(report))}</pre>\n{images}\n</body></html>\n"
    )
