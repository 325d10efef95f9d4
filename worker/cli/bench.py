"""`facewatch bench ...`: benchmarks that print a table, or JSON lines with --json."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from worker.bench.timing import format_table
from worker.cli.common import add_model_flags, emit, settings_from_args
from worker.config import WatchlistConfig
from worker.errors import FacewatchError
from worker.watchlist.ann import BUILD_KEYS

TABLE_COLUMNS = (
    ("bench", "bench"),
    ("impl", "impl"),
    ("batch", "batch"),
    ("size", "size"),
    ("items_per_s", "items/s"),
    ("ratio", "x peer"),
    ("peer", "peer"),
)
EMBED_COLUMNS = (
    *TABLE_COLUMNS[:2],
    ("precision", "precision"),
    ("rechecked", "share again in fp32"),
    *TABLE_COLUMNS[2:],
    ("vs_fp32", "x fp32"),
)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bench embed`, `bench detect` and `bench index`."""
    bench = commands.add_parser("bench", help="benchmarks against peers, measured in one run")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    embed = kinds.add_parser(
        "embed",
        help="face embedding: dlib vs torch (fp32, and bf16 where the CPU has bf16 units, also as the worker's "
        "checked search) at batch 1, 8, 32, 64, and OpenFace's nn4.small2 (random weights, fp32) at 1 and 32 (faces/s)",
        description="Ratios: against dlib; torch-nn4.small2 against torch (the torch port of dlib's ResNet); "
        "vs fp32: against the same impl's fp32 row. Rows with a 'share again in fp32' time the worker's checked "
        "search (embedder.precision auto): the batch in bf16, then that share of it again in fp32 (the shares "
        "scripts/precision_flips.py measured on LFW).",
    )
    detect = kinds.add_parser(
        "detect",
        help="detection: dlib HOG, dlib MMOD, torch MMOD, OpenCV Haar, RetinaFace in torch and in onnxruntime "
        "at 640x480 and 1280x720 (images/s)",
        description="Ratios: against dlib's MMOD; torch-retinaface against onnxruntime-retinaface (measured when "
        "onnxruntime is installed: the test extra).",
    )
    for parser in (embed, detect):
        parser.add_argument("--json", action="store_true", help="one JSON object per measured row")
        parser.add_argument("--seconds", type=float, default=2.0, help="minimum timing per row (default 2)")
        parser.add_argument("--device", help="torch device (default auto)")
        parser.set_defaults(handler=run_bench)
    embed.add_argument(
        "--precisions",
        type=lambda text: tuple(part for part in text.split(",") if part),
        metavar="P[,P...]",
        help="torch precisions to measure (fp32, bf16, fp16; default fp32 and bf16 where the CPU has bf16 units, "
        "also fp16 on CUDA)",
    )
    detect.add_argument(
        "--precisions",
        type=lambda text: tuple(part for part in text.split(",") if part),
        metavar="P[,P...]",
        help="run torch-mmod and torch-retinaface at each of these (fp32, bf16, fp16, auto; default: the "
        "configured detector.*_precision); their rows carry the precision",
    )
    embed.add_argument(
        "--batches",
        type=_int_list,
        default=[1, 8, 32, 64],
        help="batch sizes (default 1,8,32,64; nn4.small2 is measured at those of 1 and 32)",
    )
    embed.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="time the torch rows of each batch this many times in turn (--seconds split between them) and "
        "report the median (default 3)",
    )
    embed.add_argument("--no-dlib", action="store_true", help="skip dlib's rows (about 13 faces/s: slow)")
    detect.add_argument(
        "--sizes",
        type=_frame_sizes,
        metavar="WxH[,WxH...]",
        help="frame sizes to measure (default 640x480,1280x720)",
    )
    detect.add_argument(
        "--only",
        type=lambda text: [part for part in text.split(",") if part],
        metavar="IMPL[,IMPL...]",
        help="measure only these (dlib-hog, dlib-mmod, torch-mmod, opencv-haar, torch-retinaface, "
        "onnxruntime-retinaface)",
    )
    detect.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time every row this many times in turn (--seconds split between them) and report the median: "
        "steadier ratios on a busy machine (default 1)",
    )
    register_index(kinds)
    register_roofline(kinds)

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
    pipeline.add_argument(
        "--distractors",
        type=Path,
        metavar="DIR",
        help="also enroll the first photo of each of the first --distractor-count people of this folder-per-person "
        "tree (e.g. LFW's images/); none is in the video, so every match to one is a false alarm",
    )
    pipeline.add_argument("--distractor-count", type=int, default=1000, help="people enrolled from --distractors")
    pipeline.add_argument("--no-peer", action="store_true", help="skip face_recognition")
    pipeline.add_argument("--quiet", action="store_true", help="no progress bars (none is drawn off a terminal anyway)")
    pipeline.add_argument("--json", action="store_true", help="one JSON object per side")
    pipeline.set_defaults(handler=run_pipeline)
    register_streams(kinds)
    register_compat(kinds)
    register_scale(kinds)
    register_kafka(kinds)


def run_bench(args: argparse.Namespace) -> int:
    from worker.bench.recognition import (
        DETECT_IMPLS,
        DETECT_SIZES,
        add_precision_ratios,
        add_ratios,
        run_detect_bench,
        run_embed_bench,
    )

    settings = settings_from_args(args)
    if args.device:
        settings.detector.device = args.device
    if args.bench == "embed":
        if args.device:
            settings.embedder.device = args.device
        try:
            measured = run_embed_bench(
                settings,
                batches=tuple(args.batches),
                min_seconds=args.seconds,
                precisions=args.precisions,
                rounds=args.rounds,
                dlib_reference=not args.no_dlib,
            )
        except ValueError as exc:
            raise FacewatchError(str(exc)) from None
    else:
        try:
            measured = run_detect_bench(
                settings,
                sizes=tuple(args.sizes or DETECT_SIZES),
                min_seconds=args.seconds,
                impls=args.only or DETECT_IMPLS,
                rounds=args.rounds,
                precisions=args.precisions,
            )
        except ValueError as exc:
            raise FacewatchError(str(exc)) from None
    rows = []
    for row in measured:
        rows.append(row)
        if args.json:
            emit(row)
        else:
            print(
                f"  measured {row['impl']} {row.get('precision', '')} batch {row['batch']} {row['size']}: "
                f"{row['items_per_s']:.2f}/s",
                file=sys.stderr,
                flush=True,
            )
    if not args.json:
        rows = add_ratios(rows, {"embed": "dlib", "detect": "dlib-mmod"})
        print(format_table(add_precision_ratios(rows), EMBED_COLUMNS))
        _print_load()
        if any(row.get("weights") == "random" for row in rows):
            print("torch-nn4.small2: randomly initialised weights (its speed does not depend on them)")
    return 0


ROOFLINE_COLUMNS = (
    ("what", "what"),
    ("precision", "precision"),
    ("threads", "threads"),
    ("faces_per_s", "faces/s"),
    ("gflops", "GFLOP/s"),
    ("gemm_bound_faces_per_s", "GEMM-bound faces/s"),
    ("fraction_of_gemm", "of GEMM rate"),
)


def register_roofline(kinds: argparse._SubParsersAction) -> None:
    """Add `bench roofline`."""
    roofline = kinds.add_parser(
        "roofline",
        help="the chip's fp32 and bf16 matrix rate (torch.mm) and the share of it the embedder reaches, by layout "
        "and thread count",
        description="See worker/bench/roofline.py: FLOPs per chip are counted from the layer shapes; each "
        "embedder variant is timed in interleaved rounds.",
    )
    roofline.add_argument("--batch", type=int, default=32, help="chips per forward pass (default 32)")
    roofline.add_argument("--threads", type=_int_list, help="thread counts to measure (default: torch's, then 1)")
    roofline.add_argument("--seconds", type=float, default=3.0, help="timing per row, split over rounds (default 3)")
    roofline.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant (default 3)")
    roofline.add_argument("--json", action="store_true", help="one JSON object per row")
    roofline.set_defaults(handler=run_roofline_bench)


def run_roofline_bench(args: argparse.Namespace) -> int:
    import torch

    from worker.bench.recognition import sample_chips
    from worker.bench.roofline import network_flops, run_roofline
    from worker.recognition import FaceRecognizer
    from worker.runtime.device import cpu_has_bf16

    if args.batch < 1 or args.rounds < 1:
        raise FacewatchError("--batch and --rounds must be at least 1")
    settings = settings_from_args(args)
    settings.detector.device = "cpu"
    settings.embedder.device = "cpu"
    recognizer = FaceRecognizer(settings)
    chips = sample_chips(recognizer, args.batch)
    network = recognizer.embedder.reference_network  # the variants start from the fp32 weights
    threads = tuple(args.threads or dict.fromkeys([torch.get_num_threads(), 1]))
    flops = network_flops(network)
    rows = []
    for row in run_roofline(network, chips, cpu_has_bf16(), threads, args.seconds, args.rounds):
        rows.append(row)
        if args.json:
            emit(row)
    if not args.json:
        print(f"face ResNet: {flops / 1e9:.4f} GFLOP per 150x150 chip (convolutions and fc, from the layer shapes)")
        for row in rows:
            if "fraction_of_gemm" in row:
                row["fraction_of_gemm"] = f"{100 * row['fraction_of_gemm']:.0f}%"
        print(format_table(rows, ROOFLINE_COLUMNS))
    _print_load()
    return 0


def _print_load() -> None:
    """The load average beside the figures: on a shared machine they are read with it."""
    with contextlib.suppress(OSError):
        print("load average: " + " ".join(Path("/proc/loadavg").read_text().split()[:3]), file=sys.stderr)


PIPELINE_COLUMNS = (
    ("impl", "impl"),
    ("frames", "frames"),
    ("fps", "frames/s"),
    ("ratio", "x peer"),
    ("faces_per_s", "faces/s"),
    ("latency_p50_ms", "latency p50 ms"),
    ("latency_p95_ms", "latency p95 ms"),
    ("matched", "frames matched per name"),
    ("false_alarms", "false alarms"),
    ("rechecked", "fp32 rechecks"),
)
STAGE_COLUMNS = (("impl", "impl"), ("stages", "ms per frame in each stage (facewatch: summed over threads)"))


def run_pipeline(args: argparse.Namespace) -> int:
    from worker.bench.pipeline import NO_DISTRACTORS, load_distractors, run_pipeline_bench

    settings = settings_from_args(args)
    distractors = NO_DISTRACTORS
    if args.distractors is not None:
        if args.distractor_count < 1:
            raise FacewatchError("--distractor-count must be at least 1")
        distractors = load_distractors(args.distractors, args.distractor_count, settings, progress=not args.quiet)
    rows = run_pipeline_bench(
        args.video, args.enroll, settings, limit=args.frames, peer=not args.no_peer, distractors=distractors
    )
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


STREAMS_COLUMNS = (
    ("size", "size"),
    ("fps", "fps"),
    ("streams", "streams"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("max_ms", "max ms"),
    ("dropped", "dropped"),
    ("frames_per_s", "frames/s"),
    ("cpu_percent", "CPU %"),
    ("cpu_ms_per_frame", "CPU ms/frame"),
    ("batches", "batches"),
    ("mean_batch", "faces/batch"),
    ("verdict", "kept up"),
)
STREAMS_STAGE_COLUMNS = (
    ("size", "size"),
    ("streams", "streams"),
    ("stages", "ms per frame in each stage (summed over threads)"),
)


def register_streams(kinds: argparse._SubParsersAction) -> None:
    """Add `bench streams`."""
    from worker.bench.streams import DEFAULT_STEPS, LATENCY_BUDGET_MS

    streams = kinds.add_parser(
        "streams",
        help="concurrent cameras one worker sustains: N live cameras played from a file, frame-to-decision "
        "latency, drops, stage times, CPU, and the knee",
        description="Re-encodes VIDEO at each size and --fps, then, for each step, plays it to N cameras at once "
        "(file sources in live mode: paced, newest frame wins) through the worker's pipeline with the configured "
        "settings. A step keeps up when its p95 latency (capture to decided) is under --budget-ms and no frame "
        "was dropped; steps stop at the first that does not. See worker/bench/streams.py.",
    )
    streams.add_argument(
        "video",
        type=Path,
        nargs="?",
        metavar="VIDEO",
        help="video file (default: the Hamilton clip in ../shared/data/video beside the repository)",
    )
    streams.add_argument(
        "--sizes",
        type=lambda text: [part for part in text.split(",") if part],
        default=["360p", "720p"],
        metavar="SIZE[,SIZE...]",
        help="frame sizes: 360p, 720p, 1080p or WxH (default 360p,720p)",
    )
    streams.add_argument("--fps", type=float, default=10.0, help="camera frame rate (default 10)")
    streams.add_argument(
        "--steps",
        type=_int_list,
        default=list(DEFAULT_STEPS),
        metavar="N[,N...]",
        help=f"stream counts, in order (default {','.join(map(str, DEFAULT_STEPS))}; stops at the first that fails)",
    )
    streams.add_argument("--seconds", type=float, default=20.0, help="measured seconds per step (default 20)")
    streams.add_argument("--warmup", type=float, default=3.0, help="seconds per step before measuring (default 3)")
    streams.add_argument(
        "--budget-ms", type=float, default=LATENCY_BUDGET_MS, help=f"p95 latency budget (default {LATENCY_BUDGET_MS:g})"
    )
    streams.add_argument("--all-steps", action="store_true", help="run every step, also after one failed")
    streams.add_argument(
        "--enroll", type=Path, nargs="+", default=[], metavar="PHOTO", help="photos to enroll, one person each"
    )
    streams.add_argument("--json", action="store_true", help="one JSON object per step")
    add_model_flags(streams)
    streams.set_defaults(handler=run_streams)


def run_streams(args: argparse.Namespace) -> int:
    from worker.bench.streams import knee, parse_size, run_streams_bench

    sizes = [parse_size(text) for text in args.sizes]
    settings = settings_from_args(args)
    video = args.video or Path(__file__).resolve().parents[3] / "shared" / "data" / "video" / "short_hamilton_clip.mp4"

    def progress(row: dict[str, Any]) -> None:
        if args.json:
            emit(row)
        else:
            print(
                f"  measured {row['size']} x{row['streams']}: p95 {row['p95_ms']} ms, dropped {row['dropped']}, "
                f"CPU {row['cpu_percent']}%",
                file=sys.stderr,
                flush=True,
            )

    rows = run_streams_bench(
        video,
        settings,
        sizes,
        args.fps,
        args.steps,
        args.seconds,
        warmup_s=args.warmup,
        enroll=args.enroll,
        budget_ms=args.budget_ms,
        keep_going=args.all_steps,
        on_row=progress,
    )
    if args.json:
        return 0
    p = settings.pipeline
    print(
        f"settings: detector {settings.detector.name}, detect_every {p.detect_every}, detection_scale "
        f"{p.detection_scale}, lanes {p.lanes}, max_batch {p.max_batch}, max_wait_ms {p.max_wait_ms:g}; "
        f"{args.fps:g} fps per camera, {args.seconds:g} s per step; load average {_loadavg()}"
    )
    for row in rows:
        row["verdict"] = "yes" if row["ok"] else "no"
        row["stages"] = ", ".join(f"{stage} {ms:.1f}" for stage, ms in sorted(row["stage_ms_per_frame"].items()))
    print(format_table(rows, STREAMS_COLUMNS))
    print()
    print(format_table(rows, STREAMS_STAGE_COLUMNS))
    print()
    for size in dict.fromkeys(row["size"] for row in rows):
        best = knee([row for row in rows if row["size"] == size])
        budget = f"p95 < {args.budget_ms:g} ms and 0 dropped"
        verdict = f"{best} streams" if best is not None else "none (not even the first step)"
        print(f"knee {size}: {verdict} ({budget})")
    return 0


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


COMPAT_BENCHES = "loop-hog,loop-cnn,many-faces,batch-cnn"  # worker.bench.compat.BENCHES (a test keeps them equal)
COMPAT_COLUMNS = (
    ("bench", "bench"),
    ("impl", "impl"),
    ("items", "items"),
    ("faces", "faces"),
    ("per_s", "per s"),
    ("unit", "unit"),
    ("ratio", "x face_recognition"),
    ("cpu_ms", "cpu ms per item"),
)


def register_compat(kinds: argparse._SubParsersAction) -> None:
    """Add `bench compat` (its module loads on use: it imports dlib, torch and Pillow)."""
    compat = kinds.add_parser(
        "compat",
        help="face_recognition vs worker.compat.face_recognition: its documented loop over a folder of photos "
        "(images/s), many faces in one image, batched CNN",
        description="Runs the same code with `import face_recognition` and with `from worker.compat import "
        "face_recognition`, on the same images, in one run (see worker/bench/compat.py).",
    )
    compat.add_argument(
        "folder",
        type=Path,
        nargs="?",
        metavar="FOLDER",
        help="photos (.jpg, .jpeg, .png, subfolders too; default: LFW in ../shared, else the sample portraits)",
    )
    compat.add_argument("--images", type=int, default=20, help="use the first N photos by name (default 20)")
    compat.add_argument(
        "--benches",
        type=lambda text: [part for part in text.split(",") if part],
        metavar="BENCH[,BENCH...]",
        help=f"which to run (default all: {COMPAT_BENCHES})",
    )
    compat.add_argument("--rounds", type=int, default=1, help="time every row N times in turn, report the median")
    compat.add_argument("--json", action="store_true", help="one JSON object per row")
    add_model_flags(compat, detector=False, landmarks=False)
    compat.add_argument("--device", help="torch device for the encodings: auto, cpu, cuda, cuda:N (embedder.device)")
    compat.add_argument("--detector-device", help="torch device for the CNN detector (detector.device)")
    compat.set_defaults(handler=run_compat)


def run_compat(args: argparse.Namespace) -> int:
    from worker.bench.compat import BENCHES, folder_images, run_compat_bench
    from worker.samples import sample_paths

    if args.images < 1:
        raise FacewatchError("--images must be at least 1")
    settings = settings_from_args(args)
    if args.folder is not None:
        source, paths = str(args.folder), folder_images(args.folder, args.images)
    else:
        try:
            folder = default_lfw_dir() / "images"
            source, paths = str(folder), folder_images(folder, args.images)
        except FacewatchError:
            source, paths = "the sample portraits", list(sample_paths().values())[: args.images]
    rows = run_compat_bench(settings, paths, args.benches or BENCHES, args.rounds)
    if args.json:
        for row in rows:
            emit(row)
        return 0
    for row in rows:
        row["ratio"] = f"{row['ratio']:.1f}"
    print(f"{len(paths)} photos from {source}")
    print(format_table(rows, COMPAT_COLUMNS))
    return 0


INDEX_COLUMNS = (
    ("impl", "impl"),
    ("kind_text", "kind"),
    ("n", "n"),
    ("batch", "batch"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("vs_ref", "p50/ref"),
    ("recall_at_1", "recall@1"),
    ("mate_at_1", "mate@1"),
    ("mate_recall", "mate kept"),
    ("build_s", "build s"),
    ("memory_mb", "MB"),
    ("remove_p50_ms", "remove ms"),
    ("loadavg", "load"),
    ("params_text", "search params"),
)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _frame_sizes(text: str) -> list[tuple[int, int]]:
    """``640x480,1280x720`` -> [(640, 480), (1280, 720)]."""
    sizes = []
    for part in (part.strip() for part in text.split(",") if part.strip()):
        width, sep, height = part.lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit() and int(width) >= 32 and int(height) >= 32):
            raise argparse.ArgumentTypeError(f"expected sizes such as 640x480,1280x720 (32 px or more), got {text!r}")
        sizes.append((int(width), int(height)))
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected sizes such as 640x480,1280x720, got {text!r}")
    return sizes


def register_index(kinds: argparse._SubParsersAction) -> None:
    """Add `bench index`."""
    from worker.watchlist.ann import ANN_RECIPES
    from worker.watchlist.index import KINDS as WATCHLIST_KINDS

    index = kinds.add_parser(
        "index",
        help="nearest-neighbour search over N identities: exact vs ANN (latency, recall@1, build time, size)",
        description="Queries are real LFW embeddings; the database is the LFW gallery plus synthetic "
        "distractors fitted to real embeddings (see docs/benchmarks-index.md).",
    )
    index.add_argument("--sizes", type=_int_list, default=[10_000, 100_000, 1_000_000], help="database sizes")
    index.add_argument(
        "--watchlist-kinds",
        type=lambda text: [part for part in text.split(",") if part],
        default=["auto"],
        help="the watchlist's own index (worker/watchlist/index.py, as `identify` and the worker use it), "
        "comma-separated kinds (default auto, the config's default; empty for none); "
        f"known: {','.join(WATCHLIST_KINDS)}",
    )
    index.add_argument(
        "--kinds",
        type=lambda text: [part for part in text.split(",") if part],
        default=["ivfpq"],
        help=f"raw FAISS recipes beside it (default ivfpq; empty for none); known: {','.join(ANN_RECIPES)}",
    )
    index.add_argument(
        "--top-k", type=int, default=10, help="templates the watchlist index fetches per face (watchlist.top_k: 10)"
    )
    index.add_argument(
        "--removals", type=int, default=100, help="identities removed from the watchlist index before searching"
    )
    index.add_argument("--batches", type=_int_list, default=[1, 32], help="query batch sizes (default 1,32)")
    index.add_argument(
        "--lfw", type=Path, help="LFW folder of per-person image folders (default: ../shared/data/lfw beside the repo)"
    )
    index.add_argument("--queries", type=int, help="use at most this many real query embeddings (default all)")
    index.add_argument("--max-calls", type=int, default=300, help="timed search calls per row (default 300)")
    index.add_argument(
        "--rounds", type=int, default=5, help="interleaved timing rounds over all indexes of a size (default 5)"
    )
    index.add_argument(
        "--threads",
        type=int,
        default=WatchlistConfig.model_fields["search_threads"].default,
        help="FAISS threads for every index (default: the worker's, watchlist.search_threads: 1)",
    )
    index.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KIND.NAME=VALUE",
        help="override a recipe parameter, e.g. hnsw.efSearch=128; search parameters take a list to sweep "
        "on one build, e.g. hnsw.efSearch=64,128,256 (repeatable)",
    )
    index.add_argument("--cache-dir", type=Path, help="where LFW embeddings are cached (default ~/.cache/facewatch)")
    index.add_argument("--json", action="store_true", help="one JSON object per measured row")
    index.add_argument("--quiet", action="store_true", help="no progress output")
    add_model_flags(index)
    index.set_defaults(handler=run_index)


def _number(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def _overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        kind, dot, name = key.partition(".")
        if not sep or not dot or not kind or not name:
            raise FacewatchError(f"--param expects KIND.NAME=VALUE, got {item!r}")
        # Search parameters may list several values (a sweep on one build); a factory string has commas of its own.
        values = [value] if name in BUILD_KEYS else value.split(",")
        parsed = [_number(part) for part in values]
        overrides.setdefault(kind, {})[name] = parsed if len(parsed) > 1 else parsed[0]
    return overrides


SCALE_COLUMNS = (
    ("replicas", "replicas"),
    ("partitions", "partitions"),
    ("frames", "frames"),
    ("frames_per_s", "frames/s"),
    ("ratio_text", "x 1st"),
    ("rounds_text", "rounds"),
    ("window_s", "window s"),
    ("cores_used", "cores used"),
    ("frames_per_cpu_s", "frames per CPU s"),
    ("rebalance_pause_s", "rebalance pause s"),
    ("events", "events"),
    ("duplicates", "duplicates"),
    ("per_replica_text", "frames per replica"),
    ("lag_text", "group lag every 10 s"),
)


def register_scale(kinds: argparse._SubParsersAction) -> None:
    """Add `bench scale`."""
    scale = kinds.add_parser(
        "scale",
        help="scale-out: 1, 2 (then N) `facewatch run` replicas, one core each, in one consumer group on a real "
        "broker (frames/s, group lag over time, rebalance pause, duplicate events)",
        description="Each step fills a fresh frames topic with the clip's frames for several cameras, starts the "
        "replicas (the last one joins while frames flow) and drains the topic. See worker/bench/scale.py.",
    )
    scale.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers of the broker to use")
    scale.add_argument(
        "--video", type=Path, help="the clip (default: ../shared/data/video/short_hamilton_clip.mp4 beside the repo)"
    )
    scale.add_argument("--replicas", type=_int_list, default=[1, 2], help="replica counts, in order (default 1,2)")
    scale.add_argument("--partitions", type=int, help="partitions of the frames topic (default: the most replicas)")
    scale.add_argument("--cameras", type=int, help="cameras, spread evenly over the partitions (default 2 each)")
    scale.add_argument("--frames", type=int, help="frames of the clip per camera (default: all)")
    scale.add_argument(
        "--settle", type=float, default=5.0, help="seconds after the last replica's first frame before timing"
    )
    scale.add_argument("--rounds", type=int, default=1, help="run every step N times in turn, report the median")
    scale.add_argument("--json", action="store_true", help="one JSON object per replica count")
    scale.set_defaults(handler=run_scale)


def run_scale(args: argparse.Namespace) -> int:
    from worker.bench.scale import run_scale_bench

    if args.rounds < 1:
        raise FacewatchError("--rounds must be at least 1")
    video = args.video or default_clip()
    rows = run_scale_bench(
        args.bootstrap,
        video,
        args.replicas,
        partitions=args.partitions,
        cameras=args.cameras,
        frames_per_camera=args.frames,
        settle_s=args.settle,
        rounds=args.rounds,
        report=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        for row in rows:
            emit(row)
        return 0
    for row in rows:
        row["ratio_text"] = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        row["rounds_text"] = " ".join(f"{fps:.1f}" for fps in row["rounds"])
        row["per_replica_text"] = " ".join(str(n) for n in row["per_replica_frames"])
        points = row["lag_over_time"][::2]  # every 10 s: the JSON rows have every 5 s
        row["lag_text"] = " ".join("-" if lag is None else str(lag) for _, lag in points)
        if row["rebalance_pause_s"] is None:
            row["rebalance_pause_s"] = "-"
    print(f"{os.cpu_count()} cores; load average {Path('/proc/loadavg').read_text().split()[:3]}")
    print(format_table(rows, SCALE_COLUMNS))
    return 0


def default_clip() -> Path:
    """../shared/data/video/short_hamilton_clip.mp4 beside the repository checkout."""
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "video" / "short_hamilton_clip.mp4"


KAFKA_COLUMNS = (
    ("impl", "impl"),
    ("size", "size"),
    ("frames", "frames"),
    ("frames_per_s", "frames/s"),
    ("mb_per_s", "MB/s"),
    ("cpu_ms_per_frame", "CPU ms per frame"),
    ("cpu_share", "cores busy"),
    ("rounds_text", "frames/s per round"),
    ("limit_text", "frames/s one core allows"),
)


def register_kafka(kinds: argparse._SubParsersAction) -> None:
    """Add `bench kafka`."""
    kafka = kinds.add_parser(
        "kafka",
        help="the frames consumer's own cost with 720p JPEG frames and no models (frames/s, MB/s, CPU), "
        "beside the models' cost per frame",
        description="Fills a topic with the clip's frames scaled to --size, then consumes them with a bare "
        "kafka-python consumer, with the worker's KafkaFrameSource, and decodes them from memory, in turns; "
        "then runs the pipeline's models on the same frames. See worker/bench/kafka.py.",
    )
    kafka.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers of the broker to use")
    kafka.add_argument("--video", type=Path, help="the clip (default: ../shared/data/video/short_hamilton_clip.mp4)")
    kafka.add_argument("--frames", type=int, default=600, help="frames on the topic (default 600)")
    kafka.add_argument("--size", default="1280x720", help="frame size WxH (default 1280x720)")
    kafka.add_argument("--rounds", type=int, default=3, help="consume the topic N times in turn, report the median")
    kafka.add_argument(
        "--models", type=int, default=60, help="frames the models run on for the comparison (0: skip; default 60)"
    )
    kafka.add_argument("--threads", type=int, default=1, help="torch threads for the models (default 1: one core)")
    kafka.add_argument("--json", action="store_true", help="one JSON object per row")
    add_model_flags(kafka)
    kafka.set_defaults(handler=run_kafka)


def run_kafka(args: argparse.Namespace) -> int:
    from worker.bench.kafka import run_kafka_bench

    width, sep, height = args.size.partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise FacewatchError(f"--size expects WxH, got {args.size!r}")
    rows = run_kafka_bench(
        args.bootstrap,
        args.video or default_clip(),
        frames=args.frames,
        size=(int(width), int(height)),
        rounds=args.rounds,
        models=args.models,
        threads=args.threads,
        settings=settings_from_args(args),
        report=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        for row in rows:
            emit(row)
        return 0
    for row in rows:
        row["rounds_text"] = " ".join(str(fps) for fps in row.get("rounds", []))
        # One core's worth of CPU divided by the CPU one frame takes: the rate at which this part alone fills a core.
        row["limit_text"] = f"{1000.0 / row['cpu_ms_per_frame']:.0f}" if row["cpu_ms_per_frame"] else "-"
    print(f"{os.cpu_count()} cores; load average {Path('/proc/loadavg').read_text().split()[:3]}")
    print(format_table(rows, KAFKA_COLUMNS))
    models = next((row for row in rows if row["impl"] == "models"), None)
    source = next(row for row in rows if row["impl"] == "frame-source")
    if models is not None:
        stages = ", ".join(f"{stage} {ms:.1f}" for stage, ms in models["stage_ms_per_frame"].items())
        share = source["cpu_ms_per_frame"] / (source["cpu_ms_per_frame"] + models["cpu_ms_per_frame"])
        first = "the Kafka client" if source["cpu_ms_per_frame"] > models["cpu_ms_per_frame"] else "the models"
        print(f"models, ms per frame in each stage: {stages}")
        print(
            f"frame source (Kafka client, checks, JPEG decode) {source['cpu_ms_per_frame']:.1f} ms CPU per frame "
            f"against the models' {models['cpu_ms_per_frame']:.1f} ms (stage times): {share:.0%} of a one-core "
            f"worker's time; "
            f"{first} limit(s) it first"
        )
    return 0


def default_lfw_dir() -> Path:
    """../shared/data/lfw beside the repository checkout, where the project keeps its real data."""
    candidate = Path(__file__).resolve().parents[3] / "shared" / "data" / "lfw"
    if not candidate.is_dir():
        raise FacewatchError(f"no LFW folder at {candidate}; pass --lfw DIR (a folder of per-person image folders)")
    return candidate


def run_index(args: argparse.Namespace) -> int:
    import faiss

    from worker.bench.index import run_index_bench, split_gallery, split_sweep
    from worker.evaluation.cache import embed_identity_tree
    from worker.watchlist.ann import recipe
    from worker.watchlist.index import KINDS as WATCHLIST_KINDS

    overrides = _overrides(args.param)
    for kind in args.kinds:
        recipe(kind, **split_sweep(overrides.get(kind, {}))[0])  # fails before minutes of embedding
    for kind in args.watchlist_kinds:
        if kind not in WATCHLIST_KINDS:
            raise FacewatchError(f"unknown watchlist index kind {kind!r}; known: {', '.join(WATCHLIST_KINDS)}")
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    lfw = args.lfw or default_lfw_dir()
    _, labels, result = embed_identity_tree(lfw, settings_from_args(args), args.cache_dir, progress=not args.quiet)
    split = split_gallery(result.embeddings, labels)
    if args.queries:
        split = type(split)(split.gallery, split.queries[: args.queries], split.mates[: args.queries])
    rows = []
    for row in run_index_bench(
        split,
        args.sizes,
        args.kinds,
        args.batches,
        args.max_calls,
        overrides,
        progress=not args.quiet,
        watchlist_kinds=args.watchlist_kinds,
        top_k=args.top_k,
        removals=args.removals,
        rounds=args.rounds,
    ):
        rows.append(row)
        if args.json:
            emit(row)
        elif not args.quiet:
            print(
                f"  measured {row['impl']} {row['kind']} n={row['n']} batch {row['batch']}: "
                f"p99 {row['p99_ms']:.2f} ms, recall@1 {row['recall_at_1']:.4f}",
                file=sys.stderr,
                flush=True,
            )
    if not args.json:
        for row in rows:
            row["params_text"] = " ".join(f"{k}={v}" for k, v in row["params"].items()) or "-"
            effective = row.get("effective_kind")
            row["kind_text"] = f"{row['kind']}={effective}" if effective and effective != row["kind"] else row["kind"]
            row["recall_at_1"] = f"{row['recall_at_1']:.4f}"
            for key in ("mate_at_1", "mate_recall"):
                row[key] = "-" if row[key] is None else f"{row[key]:.4f}"
        print(format_table(rows, INDEX_COLUMNS))
    return 0
