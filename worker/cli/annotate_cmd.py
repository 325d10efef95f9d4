"""`facewatch annotate`: a video or image with what the worker decided drawn on it (worker/stream/annotate.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from worker.cli.common import add_model_flags, emit, settings_from_args
from worker.errors import FacewatchError
from worker.watchlist.enroll import IMAGE_SUFFIXES


def register(commands: argparse._SubParsersAction) -> None:
    """Add `annotate` to the top-level parser."""
    annotate = commands.add_parser(
        "annotate",
        help="draw what the worker decides (boxes, track ids, names, status, confidence) on a video or image",
        description="Runs the worker's streaming pipeline (detection every pipeline.detect_every frames, "
        "tracking, embedding, watchlist search, the per-track decision rules) over a video file or an image "
        "and draws each tracked face: its box, track id, name and status (match, deciding, uncertain, unknown, "
        "tracking) with the confidence. A video is written as H.264 MP4 (--out FILE.mp4), an image as an "
        "image (--out FILE.png or .jpg); --at SECONDS writes only the video's frame at that time, as an image. "
        "The events the worker would publish are printed as JSON lines (frame times are the video's own "
        "clock from its first frame, as seconds after 1970-01-01T00:00:00Z). An image is one frame: its "
        "tracks cannot reach decisions.min_faces votes, so they show as deciding.",
    )
    annotate.add_argument("source", metavar="VIDEO|IMAGE", type=Path)
    annotate.add_argument("--out", required=True, type=Path, metavar="FILE", help="the annotated .mp4 or image")
    annotate.add_argument(
        "--at", type=float, metavar="SECONDS", help="video: write only the frame this long after its start, as an image"
    )
    annotate.add_argument("--store", dest="watchlist_store", metavar="PATH", help="watchlist SQLite file")
    add_model_flags(annotate)
    annotate.set_defaults(handler=run_annotate)


def run_annotate(args: argparse.Namespace) -> int:
    from worker.stream.annotate import annotate_image, annotate_video
    from worker.stream.events import FaceMatch

    source, out = args.source, args.out
    if not source.is_file():
        raise FacewatchError(f"{source} does not exist")
    if not out.parent.is_dir():  # checked first: finding out after the whole video would waste it
        raise FacewatchError(f"--out {out}: folder {out.parent} does not exist")
    is_image = source.suffix.lower() in IMAGE_SUFFIXES
    wants_image = out.suffix.lower() in IMAGE_SUFFIXES
    if args.at is not None and (is_image or args.at < 0):
        raise FacewatchError("--at takes a time (seconds, 0 or more) in a video")
    if (is_image or args.at is not None) and not wants_image:
        raise FacewatchError(f"--out {out}: an image is written here, so give an image name (.png, .jpg)")
    if not (is_image or args.at is not None) and out.suffix.lower() != ".mp4":
        raise FacewatchError(f"--out {out}: the annotated video is H.264 MP4, so give a name ending in .mp4")
    settings = settings_from_args(args)
    result = annotate_image(settings, source, out) if is_image else annotate_video(settings, source, out, args.at)
    for event in result.events:
        emit(event.model_dump(mode="json"))
    matches = sorted({e.identity_name for e in result.events if isinstance(e, FaceMatch)})
    tracks = len({e.track_id for e in result.events if e.type == "track_ended"})
    print(
        f"annotate: {result.frames} frame{'' if result.frames == 1 else 's'}, {tracks} track(s) ended, "
        f"matched: {', '.join(matches) or 'nobody'}; wrote {out}",
        file=sys.stderr,
    )
    return 0
