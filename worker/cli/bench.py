"""`facewatch bench ...`: benchmarks that print a table, or JSON lines with --json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from worker.bench.timing import format_table
from worker.cli.common import emit, settings_from_args

TABLE_COLUMNS = (
    ("bench", "bench"),
    ("impl", "impl"),
    ("batch", "batch"),
    ("size", "size"),
    ("items_per_s", "items/s"),
    ("ratio", "x peer"),
    ("peer", "peer"),
)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bench embed` and `bench detect`."""
    bench = commands.add_parser("bench", help="benchmarks against peers, measured in one run")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    embed = kinds.add_parser("embed", help="face embedding: dlib vs torch at batch 1, 8, 32, 64 (faces/s)")
    detect = kinds.add_parser(
        "detect", help="detection: dlib HOG, dlib MMOD, torch MMOD, OpenCV Haar at 640x480 and 1280x720 (images/s)"
    )
    for parser in (embed, detect):
        parser.add_argument("--json", action="store_true", help="one JSON object per measured row")
        parser.add_argument("--seconds", type=float, default=2.0, help="minimum timing per row (default 2)")
        parser.add_argument("--device", help="torch device (default auto)")
        parser.set_defaults(handler=run_bench)

    pipeline = kinds.add_parser(
        "pipeline",
        help="the whole job on a video: facewatch vs the face_recognition library (frames/s, matches, latency)",
        description="Runs facewatch's streaming pipeline (with the configured detector, detect_every, batching) "
        "and face_recognition's per-frame loop on the same video, with the same photos enrolled, one after the "
        "other, and prints frames/s, faces/s, frames matched per name and latency. See worker/bench/pipeline.py.",
    )
    pipeline.add_argument("video", type=Path, metavar="VIDEO", help="video file")
    pipeline.add_argument(
        "--enroll", type=Path, nargs="+", required=True, metavar="PHOTO", help="one photo per person, named by file"
    )
    pipeline.add_argument("--frames", type=int, help="only the first N frames")
    pipeline.add_argument("--no-peer", action="store_true", help="skip face_recognition")
    pipeline.add_argument("--json", action="store_true", help="one JSON object per side")
    pipeline.set_defaults(handler=run_pipeline)


def run_bench(args: argparse.Namespace) -> int:
    from worker.bench.recognition import add_ratios, run_detect_bench, run_embed_bench

    settings = settings_from_args(args)
    if args.device:
        settings.detector.device = args.device
    runner = run_embed_bench if args.bench == "embed" else run_detect_bench
    rows = []
    for row in runner(settings, min_seconds=args.seconds):
        rows.append(row)
        if args.json:
            emit(row)
        else:
            print(
                f"  measured {row['impl']} batch {row['batch']} {row['size']}: {row['items_per_s']:.2f}/s",
                file=sys.stderr,
                flush=True,
            )
    if not args.json:
        print(format_table(add_ratios(rows, {"embed": "dlib", "detect": "dlib-mmod"}), TABLE_COLUMNS))
    return 0


PIPELINE_COLUMNS = (
    ("impl", "impl"),
    ("frames", "frames"),
    ("fps", "frames/s"),
    ("ratio", "x peer"),
    ("faces_per_s", "faces/s"),
    ("latency_p50_ms", "latency p50 ms"),
    ("latency_p95_ms", "latency p95 ms"),
    ("matched", "frames matched per name"),
)
STAGE_COLUMNS = (("impl", "impl"), ("stages", "ms per frame in each stage (facewatch: summed over threads)"))


def run_pipeline(args: argparse.Namespace) -> int:
    from worker.bench.pipeline import run_pipeline_bench

    settings = settings_from_args(args)
    rows = run_pipeline_bench(args.video, args.enroll, settings, limit=args.frames, peer=not args.no_peer)
    if args.json:
        for row in rows:
            emit(row)
        return 0
    peer_fps = rows[-1]["fps"] if len(rows) > 1 else None
    for row in rows:
        row["ratio"] = f"{row['fps'] / peer_fps:.1f}" if peer_fps else "-"
        row["matched"] = ", ".join(f"{name} {count}" for name, count in row["matched_frames"].items())
        row["stages"] = ", ".join(f"{stage} {ms:.1f}" for stage, ms in row["stage_ms_per_frame"].items())
    p = settings.pipeline
    print(
        f"facewatch settings: detector {settings.detector.name} (upsample {settings.detector.upsample}), "
        f"detect_every {p.detect_every}, detection_scale {p.detection_scale}, lanes {p.lanes}, "
        f"max_batch {p.max_batch}; peer: face_recognition HOG upsample 1, tolerance 0.6"
    )
    print(format_table(rows, PIPELINE_COLUMNS))
    print()
    print(format_table(rows, STAGE_COLUMNS))
    return 0
