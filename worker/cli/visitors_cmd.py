"""`facewatch visitors ...`: list, show, forget, report, recluster and the opt-out list (docs/visitors.md)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from worker.admin.visitors import VisitorService
from worker.cli.common import add_model_flags, emit, settings_from_args
from worker.errors import FacewatchError
from worker.visitors.store import VisitorStore


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="seconds")


def register(commands: argparse._SubParsersAction) -> None:
    """Add `visitors` and its sub-commands."""
    visitors = commands.add_parser(
        "visitors",
        help="anonymous visitors: list, show, forget, report, recluster, opt-out",
        description="The anonymous visitors the worker counted (visitors.enabled) and their visits.",
    )
    visitors.add_argument("--store", dest="visitors_store", metavar="PATH", help="visitor store (visitors.store)")
    actions = visitors.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="visitors held (within visitors.retention_hours)")
    listing.add_argument("--json", action="store_true", help="one JSON object per visitor")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", help="one visitor's visits and tracks (never the embeddings)")
    show.add_argument("visitor_id")
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.set_defaults(handler=run_show)

    forget = actions.add_parser(
        "forget", help="delete a visitor, its tracks' embeddings and its visits for good (the worker follows)"
    )
    forget.add_argument("visitor_id")
    forget.set_defaults(handler=run_forget)

    report = actions.add_parser(
        "report",
        help="unique and returning visitors per hour and day, dwell, busiest hours",
        description="From the visitor store, or from a log of events (--events FILE: JSON lines, as the worker "
        "prints them). Hours and days are UTC.",
    )
    report.add_argument("--since", default="7d", help="ISO time or span back from now: 30m, 24h, 7d (default 7d)")
    report.add_argument("--camera", action="append", default=[], help="only this camera or zone (repeatable)")
    report.add_argument("--events", type=Path, metavar="FILE", help="read visits from this event log instead")
    report.add_argument("--json", action="store_true", help="the report as one JSON object")
    report.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML report with PNG plots")
    report.set_defaults(handler=run_report)

    recluster = actions.add_parser(
        "recluster",
        help="re-cluster the stored tracks with Chinese whispers and report what would change",
        description="Global re-clustering of the tracks within retention (or the --since/--until window): "
        "visitors before and after, tracks moved, merges and splits. --apply writes it (whole store only).",
    )
    recluster.add_argument("--since", help="only tracks that ended after this (ISO time or span)")
    recluster.add_argument("--until", help="only tracks that ended before this (ISO time)")
    recluster.add_argument("--threshold", type=float, help="graph edge distance (default visitors.threshold)")
    recluster.add_argument("--apply", action="store_true", help="write the new labelling to the store")
    recluster.add_argument("--json", action="store_true", help="the summary as one JSON object")
    recluster.set_defaults(handler=run_recluster)

    opt_out = actions.add_parser("opt-out", help="people who must never be counted as visitors")
    opt_actions = opt_out.add_subparsers(dest="opt_action", metavar="ACTION", required=True)
    add = opt_actions.add_parser(
        "add",
        help="add a person from photos of them (the largest face of each); their visitors are forgotten now",
    )
    add.add_argument("photos", nargs="+", type=Path)
    add_model_flags(add)
    add.set_defaults(handler=run_opt_out_add)
    remove = opt_actions.add_parser("remove", help="delete an opt-out entry's faces for good")
    remove.add_argument("entry")
    remove.set_defaults(handler=run_opt_out_remove)
    entries = opt_actions.add_parser("list", help="opt-out entries (ids and face counts only)")
    entries.set_defaults(handler=run_opt_out_list)


def _store(args: argparse.Namespace, create: bool = False) -> VisitorStore:
    settings = settings_from_args(args)
    path = Path(args.visitors_store) if getattr(args, "visitors_store", None) else settings.visitors.store
    if not path.exists() and not create:
        raise FacewatchError(f"no visitor store at {path} (visitors.store)")
    return VisitorStore(path)


def _service(args: argparse.Namespace) -> VisitorService:
    """The shared visitor operations (worker/admin/visitors.py) on --store or visitors.store."""
    return VisitorService(settings_from_args(args), path=getattr(args, "visitors_store", None))


def run_list(args: argparse.Namespace) -> int:
    for record in _service(args).list_visitors():
        if args.json:
            emit(record)
        else:
            print(
                f"{record['visitor_id']}  first {record['first_seen']}  last {record['last_seen']}  "
                f"tracks {record['tracks']}  visits {record['visits']}"
            )
    return 0


def run_show(args: argparse.Namespace) -> int:
    record = _service(args).show(args.visitor_id)
    if args.json:
        emit(record)
        return 0
    print(f"visitor {args.visitor_id}: first seen {record['first_seen']}, last seen {record['last_seen']}")
    for v in record["visits"]:
        state = "open" if v["open"] else f"{v['dwell_s']} s"
        returning = ", returning" if v["returning"] else ""
        print(f"  visit {v['visit_id']} {v['zone']} from {v['started_at']}: {state}, {v['tracks']} tracks{returning}")
    print(f"  {len(record['tracks'])} tracks with embeddings held")
    return 0


def run_forget(args: argparse.Namespace) -> int:
    _service(args).forget(args.visitor_id)
    print(f"forgot visitor {args.visitor_id}: its embeddings, tracks and visits are deleted", file=sys.stderr)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from worker.visitors.report import build_report, format_html, format_text, parse_since, visits_from_events

    if args.events:
        since = parse_since(args.since)
        if not args.events.is_file():
            raise FacewatchError(f"no event log at {args.events}")
        bad: list[int] = []
        with args.events.open(encoding="utf-8", errors="replace") as lines:
            visits = visits_from_events(lines, bad)
        if bad:
            print(
                f"facewatch: warning: {len(bad)} lines of {args.events} are not valid events (first: line {bad[0]}); "
                "skipped",
                file=sys.stderr,
            )
        report = build_report(visits, since, args.camera)
    else:
        report = _service(args).report(args.since, args.camera)
    if args.html:
        args.html.write_text(format_html(report), encoding="utf-8")
        print(f"HTML report: {args.html}", file=sys.stderr)
    if args.json:
        emit(report)
    else:
        sys.stdout.write(format_text(report))
    return 0


def run_recluster(args: argparse.Namespace) -> int:
    from worker.visitors.recluster import apply, recluster
    from worker.visitors.report import parse_since

    if args.apply and (args.since or args.until):
        raise FacewatchError("--apply re-labels the whole store: leave out --since and --until")
    settings = settings_from_args(args)
    threshold = args.threshold if args.threshold is not None else settings.visitors.threshold
    since = parse_since(args.since).timestamp() if args.since else None
    until = parse_since(args.until).timestamp() if args.until else None
    with _store(args) as store:
        result = recluster(store.tracks(since, until), threshold)
        if args.apply and result.tracks:
            apply(store, result)
    summary = {**result.summary, "applied": bool(args.apply and result.tracks)}
    if args.json:
        emit(summary)
        return 0
    print(
        f"{summary['tracks']} tracks: {summary['visitors_before']} visitors online, {summary['visitors_after']} "
        f"after Chinese whispers at {threshold:g}; {summary['tracks_moved']} tracks would move, "
        f"{summary['merged']} visitors merge into others, {summary['split']} splits"
        + (" (applied)" if summary["applied"] else "")
    )
    return 0


def run_opt_out_add(args: argparse.Namespace) -> int:
    from worker.recognition import FaceRecognizer
    from worker.vision.image import load_image

    settings = settings_from_args(args)
    recognizer = FaceRecognizer(settings)
    vectors = []
    for path in args.photos:
        faces = recognizer.analyze([load_image(path, max_pixels=settings.images.max_pixels)])[0]
        largest = faces.largest()
        if largest is None:
            raise FacewatchError(f"{path}: no face found")
        vectors.append(faces.embeddings[largest])
    matrix = np.stack(vectors)
    with _store(args, create=True) as store:
        entry = store.opt_out_add(matrix)
        # Visitors already counted who are this person: forgotten now, not only from now on.
        forgotten = [
            v.id
            for v in store.visitors()
            if float(np.linalg.norm(matrix - v.centroid_sum / max(v.weight, 1e-9), axis=1).min())
            <= settings.visitors.opt_out_threshold
        ]
        for visitor_id in forgotten:
            store.forget(visitor_id)
    print(f"opt-out entry {entry}: {len(matrix)} faces; {len(forgotten)} visitors forgotten", file=sys.stderr)
    print(entry)
    return 0


def run_opt_out_remove(args: argparse.Namespace) -> int:
    with _store(args) as store:
        if not store.opt_out_remove(args.entry):
            raise FacewatchError(f"no opt-out entry {args.entry!r}")
    print(f"opt-out entry {args.entry} deleted", file=sys.stderr)
    return 0


def run_opt_out_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        for entry, faces, created in store.opt_out_entries():
            print(f"{entry}  {faces} faces  added {_iso(created)}")
    return 0
