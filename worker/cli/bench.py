"""`facewatch bench ...`: benchmarks that print a table, or JSON lines with --json."""

from __future__ import annotations

import argparse
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


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bench embed`, `bench detect` and `bench index`."""
    bench = commands.add_parser("bench", help="benchmarks against peers, measured in one run")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    embed = kinds.add_parser("embed", help="face embedding: dlib vs torch at batch 1, 8, 32, 64 (faces/s)")
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


def run_bench(args: argparse.Namespace) -> int:
    from worker.bench.recognition import DETECT_IMPLS, add_ratios, run_detect_bench, run_embed_bench

    settings = settings_from_args(args)
    if args.device:
        settings.detector.device = args.device
    if args.bench == "embed":
        measured = run_embed_bench(settings, min_seconds=args.seconds)
    else:
        try:
            measured = run_detect_bench(
                settings, min_seconds=args.seconds, impls=args.only or DETECT_IMPLS, rounds=args.rounds
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
