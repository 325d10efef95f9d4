"""`facewatch bench ...`: benchmarks that print a table, or JSON lines with --json."""

from __future__ import annotations

import argparse
import sys

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
