"""`facewatch bench ...`: benchmarks that print a table, or JSON lines with --json."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from worker.bench.timing import format_table
from worker.cli.common import add_model_flags, emit, settings_from_args
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


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bench embed`, `bench detect` and `bench index`."""
    bench = commands.add_parser("bench", help="benchmarks against peers, measured in one run")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    embed = kinds.add_parser(
        "embed",
        help="face embedding: dlib's ResNet in dlib and in torch at batch 1, 8, 32, 64, OpenFace's nn4.small2 "
        "(random weights) at 1 and 32 (faces/s)",
        description="Ratios: against dlib; torch-nn4.small2 against torch (the torch port of dlib's ResNet).",
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
    embed.add_argument(
        "--batches",
        type=lambda text: tuple(_int_list(text)),
        default=None,
        metavar="N[,N...]",
        help="batch sizes (default 1,8,32,64; nn4.small2 is measured at those of 1 and 32)",
    )
    for parser in (embed, detect):
        parser.add_argument(
            "--rounds",
            type=int,
            default=1,
            help="time every row this many times in turn (--seconds split between them) and report the median: "
            "steadier ratios on a busy machine (default 1)",
        )
    register_index(kinds)

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
    register_compat(kinds)
    register_scale(kinds)
    register_kafka(kinds)


def run_bench(args: argparse.Namespace) -> int:
    from worker.bench.recognition import (
        DETECT_IMPLS,
        DETECT_SIZES,
        EMBED_BATCHES,
        add_ratios,
        run_detect_bench,
        run_embed_bench,
    )

    settings = settings_from_args(args)
    if args.device:
        settings.detector.device = args.device
    if args.bench == "embed":
        if args.rounds < 1:
            raise FacewatchError("--rounds must be at least 1")
        measured = run_embed_bench(
            settings, batches=args.batches or EMBED_BATCHES, min_seconds=args.seconds, rounds=args.rounds
        )
    else:
        try:
            measured = run_detect_bench(
                settings,
                sizes=tuple(args.sizes or DETECT_SIZES),
                min_seconds=args.seconds,
                impls=args.only or DETECT_IMPLS,
                rounds=args.rounds,
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
                f"  measured {row['impl']} batch {row['batch']} {row['size']}: {row['items_per_s']:.2f}/s",
                file=sys.stderr,
                flush=True,
            )
    if not args.json:
        print(format_table(add_ratios(rows, {"embed": "dlib", "detect": "dlib-mmod"}), TABLE_COLUMNS))
        if any(row.get("weights") == "random" for row in rows):
            print("torch-nn4.small2: randomly initialised weights (its speed does not depend on them)")
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
    ("false_alarms", "false alarms"),
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
    ("kind", "kind"),
    ("n", "n"),
    ("batch", "batch"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("recall_at_1", "recall@1"),
    ("mate_at_1", "mate@1"),
    ("mate_recall", "mate kept"),
    ("build_s", "build s"),
    ("memory_mb", "MB"),
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

    index = kinds.add_parser(
        "index",
        help="nearest-neighbour search over N identities: exact vs ANN (latency, recall@1, build time, size)",
        description="Queries are real LFW embeddings; the database is the LFW gallery plus synthetic "
        "distractors fitted to real embeddings (see docs/benchmarks-index.md).",
    )
    index.add_argument("--sizes", type=_int_list, default=[10_000, 100_000, 1_000_000], help="database sizes")
    index.add_argument(
        "--kinds",
        type=lambda text: [part for part in text.split(",") if part],
        default=["exact", "hnsw", "ivf_hnsw"],
        help=f"comma-separated index recipes (default exact,hnsw,ivf_hnsw); known: {','.join(ANN_RECIPES)}",
    )
    index.add_argument("--batches", type=_int_list, default=[1, 32], help="query batch sizes (default 1,32)")
    index.add_argument(
        "--lfw", type=Path, help="LFW folder of per-person image folders (default: ../shared/data/lfw beside the repo)"
    )
    index.add_argument("--queries", type=int, help="use at most this many real query embeddings (default all)")
    index.add_argument("--max-calls", type=int, default=300, help="timed search calls per row (default 300)")
    index.add_argument("--threads", type=int, help="FAISS threads (default: one per core)")
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

    overrides = _overrides(args.param)
    for kind in args.kinds:
        recipe(kind, **split_sweep(overrides.get(kind, {}))[0])  # fails before minutes of embedding
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    lfw = args.lfw or default_lfw_dir()
    _, labels, result = embed_identity_tree(lfw, settings_from_args(args), args.cache_dir, progress=not args.quiet)
    split = split_gallery(result.embeddings, labels)
    if args.queries:
        split = type(split)(split.gallery, split.queries[: args.queries], split.mates[: args.queries])
    rows = []
    for row in run_index_bench(
        split, args.sizes, args.kinds, args.batches, args.max_calls, overrides, progress=not args.quiet
    ):
        rows.append(row)
        if args.json:
            emit(row)
        elif not args.quiet:
            print(
                f"  measured {row['kind']} n={row['n']} batch {row['batch']}: p99 {row['p99_ms']:.2f} ms, "
                f"recall@1 {row['recall_at_1']:.4f}",
                file=sys.stderr,
                flush=True,
            )
    if not args.json:
        for row in rows:
            row["params_text"] = " ".join(f"{k}={v}" for k, v in row["params"].items()) or "-"
            row["recall_at_1"] = f"{row['recall_at_1']:.4f}"
            for key in ("mate_at_1", "mate_recall"):
                row[key] = "-" if row[key] is None else f"{row[key]:.4f}"
        print(format_table(rows, INDEX_COLUMNS))
    return 0
