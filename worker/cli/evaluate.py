"""`facewatch eval lfw`, `eval identify`, `eval detect` and `eval quality`: accuracy on labelled face data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from worker.bench.timing import format_table
from worker.cli.common import add_model_flags, emit, report_error, settings_from_args
from worker.config import Settings
from worker.errors import FacewatchError, ImageError
from worker.evaluation.dataset import DatasetEmbedder, DatasetEmbeddings
from worker.evaluation.detection import (
    GT_FILE,
    HEIGHT_BUCKETS,
    DetectionScore,
    ImageTruth,
    plot_precision_recall,
    read_ground_truth,
    run_detector,
    score_detections,
)
from worker.evaluation.lfw import plot_roc, read_pairs, roc, ten_fold
from worker.recognition import FaceRecognizer
from worker.vision.detectors import DETECTORS

# A pair with an image that yields no embedding is scored as "different" (the protocol counts every pair).
NO_FACE_DISTANCE = 10.0


def add_dataset_flags(parser: argparse.ArgumentParser) -> None:
    """How each dataset image is embedded (see worker/evaluation/dataset.py)."""
    add_model_flags(parser)
    parser.add_argument("--no-flip", action="store_true", help="embed each face once, without its mirror image")
    parser.add_argument(
        "--fallback",
        choices=("median", "none"),
        default="median",
        help="when no face is detected: the run's median box (default) or no embedding",
    )
    parser.add_argument(
        "--also-68",
        action="store_true",
        help="also align each face with the 68-point model and average the two embeddings on the unit sphere "
        "(more accurate, about 2x the embedding work; distances are then not on dlib's scale; the 68-point "
        "model is for NON-COMMERCIAL use only)",
    )
    parser.add_argument("--threads", type=int, default=2, help="threads for decoding, detection and alignment")
    parser.add_argument("--json", action="store_true", help="JSON output; the last line is the summary")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register(commands: argparse._SubParsersAction) -> None:
    """Add `eval lfw`, `eval identify` and `eval detect`."""
    evaluate = commands.add_parser("eval", help="measure accuracy on labelled face datasets")
    kinds = evaluate.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    lfw = kinds.add_parser(
        "lfw",
        help="LFW pairs, standard 10-fold protocol",
        description="Verification accuracy on LFW pairs.txt: each fold's threshold is chosen on the other nine.",
    )
    lfw.add_argument("--lfw", required=True, type=Path, help="folder of per-person LFW image folders")
    lfw.add_argument("--pairs", required=True, type=Path, help="pairs.txt (View 2) or pairsDevTest.txt")
    lfw.add_argument("--roc", type=Path, default=Path("lfw_roc.png"), help="where to write the ROC curve PNG")
    lfw.add_argument(
        "--model",
        type=Path,
        metavar="MODEL.pt",
        help="embed with this nn4.small2 (facewatch train's output, a state dict, or OpenFace's .t7) on OpenFace's "
        "96x96 chips (HOG + 68 landmarks, the centre box where HOG finds no face) instead of dlib's ResNet",
    )
    lfw.add_argument(
        "--centred",
        action="store_true",
        help="with --model: no detection, landmarks fitted in LFW's centre box (as `train --centred` aligns)",
    )
    add_dataset_flags(lfw)
    lfw.set_defaults(handler=run_lfw)
    identify = kinds.add_parser(
        "identify",
        help="open-set identification (1:N) on a folder-per-identity tree",
        description="Enroll one image of each person with two or more images; probe with their other images "
        "(mated) and with every one-image person (non-mated). Reports rank-1, TPIR at FPIR 1% and 0.1%, and "
        "writes the DET curve (FNIR vs FPIR, log axes) and the same-person and stranger distance histograms, "
        "the thresholds marked on both.",
    )
    identify.add_argument("--dataset", required=True, type=Path, help="folder of per-identity image folders")
    identify.add_argument(
        "--det", type=Path, default=Path("identify_det.png"), metavar="FILE.png", help="where to write the DET curve"
    )
    identify.add_argument(
        "--histograms",
        type=Path,
        default=Path("identify_distances.png"),
        metavar="FILE.png",
        help="where to write the distance histograms",
    )
    identify.add_argument(
        "--people-from",
        type=Path,
        metavar="PAIRS",
        help="only the people an LFW pairs file names (e.g. pairsDevTest.txt: a model trained on "
        "pairsDevTrain.txt's people never saw them)",
    )
    identify.add_argument("--cache-dir", type=Path, help="embedding cache (default ~/.cache/facewatch)")
    identify.add_argument("--no-cache", action="store_true", help="embed every image again, and cache nothing")
    identify.add_argument(
        "--compare-classifiers",
        action="store_true",
        help="instead: enroll --templates images of each person with more, through a real watchlist, and compare "
        "the nearest-template rule with the SVM (watchlist.classifier) at the configured thresholds: correct and "
        "wrong matches of mated probes, false matches of strangers (the first image of everyone else)",
    )
    identify.add_argument(
        "--templates", type=int, default=3, metavar="K", help="--compare-classifiers: images enrolled per person (3)"
    )
    add_dataset_flags(identify)
    identify.set_defaults(handler=run_identify)
    register_quality(kinds)
    register_detect(kinds)
    register_cluster(kinds)


CLUSTER_THRESHOLDS = tuple(round(0.40 + 0.01 * i, 2) for i in range(13))  # 0.40 .. 0.52


def register_cluster(kinds: argparse._SubParsersAction) -> None:
    """Add `eval cluster`."""
    cluster = kinds.add_parser(
        "cluster",
        help="visitor clustering: BCubed and pairwise F on a folder-per-identity tree",
        description="Clusters the images of the people with two or more images, each image as one track. The "
        "threshold is chosen (best BCubed F) on the people named in --dev-pairs and reported on all the others.",
    )
    cluster.add_argument(
        "--dataset",
        type=Path,
        help="folder of per-identity image folders (without it: only --video with --labels, at visitors.threshold)",
    )
    cluster.add_argument(
        "--dev-pairs",
        type=Path,
        help="pairs file naming the threshold-choice people (default DATASET/pairsDevTrain.txt)",
    )
    cluster.add_argument(
        "--method",
        choices=("online", "whispers"),
        default="online",
        help="online: the worker's clusterer, images in a random order (default); whispers: the offline recluster",
    )
    cluster.add_argument("--seed", type=int, default=0, help="order of the images (online) and of the updates")
    cluster.add_argument(
        "--merge-threshold", type=float, help="online: merge visitors this close (default visitors.merge_threshold)"
    )
    cluster.add_argument("--video", type=Path, help="also measure per track on this video (the Hamilton clip)")
    cluster.add_argument(
        "--stills", type=Path, help="with --video: a folder of one photo per person, to label the tracks"
    )
    cluster.add_argument(
        "--labels",
        type=Path,
        help="with --video: person labels given by eye per track (worker/evaluation/data/hamilton_tracks.json for "
        "the Hamilton clip); instead of --stills",
    )
    cluster.add_argument(
        "--min-faces",
        type=int,
        default=3,
        help="with --video: tracks with fewer faces are left out (visitors.min_faces)",
    )
    cluster.add_argument("--cache-dir", type=Path, help="embedding cache (default ~/.cache/facewatch)")
    cluster.add_argument("--no-cache", action="store_true", help="embed every image again, and cache nothing")
    add_dataset_flags(cluster)
    cluster.set_defaults(handler=run_cluster)


def run_cluster(args: argparse.Namespace) -> int:
    from worker.evaluation.cluster import choose_threshold, cluster_scores, dev_people
    from worker.evaluation.openset import dataset_images_root
    from worker.visitors.cluster import chinese_whispers, online_labels

    if args.dataset is None:
        return _video_only(args)
    pairs = args.dev_pairs or args.dataset / "pairsDevTrain.txt"
    if not pairs.is_file():
        raise FacewatchError(f"no threshold-choice pairs file at {pairs} (--dev-pairs)")
    settings = settings_from_args(args)
    _, labels, result = _embed_tree(args, settings)
    names = np.array(labels)
    vectors = result.embeddings
    people, counts = np.unique(names, return_counts=True)
    usable = np.isin(names, people[counts >= 2]) & ~np.isnan(vectors).any(axis=1)
    dev = np.isin(names, sorted(dev_people(pairs, dataset_images_root(args.dataset))))
    rng = np.random.default_rng(args.seed)
    merge_threshold = args.merge_threshold if args.merge_threshold is not None else settings.visitors.merge_threshold

    def cluster(x: np.ndarray, threshold: float) -> np.ndarray:
        if args.method == "whispers":
            return chinese_whispers(x, threshold, seed=args.seed)
        return online_labels(x, threshold, merge_threshold, order=rng.permutation(len(x)))

    threshold, sweep = choose_threshold(cluster, vectors[usable & dev], names[usable & dev], CLUSTER_THRESHOLDS)
    test = usable & ~dev
    scores = cluster_scores(names[test], cluster(vectors[test], threshold))
    summary = {
        "bcubed_f": scores["bcubed_f"],
        "bcubed_precision": scores["bcubed_precision"],
        "bcubed_recall": scores["bcubed_recall"],
        "pairwise_f": scores["pairwise_f"],
        "clusters": scores["clusters"],
        "people": scores["people"],
        "images": scores["images"],
    }
    video = _video_clusters(args, settings, cluster, threshold) if args.video else None
    if args.json:
        for row in sweep:
            emit({"split": "dev", "method": args.method, **row})
        emit({"split": "test", "method": args.method, "threshold": threshold, **scores})
        if video is not None:
            emit({"split": "video", "method": args.method, "threshold": threshold, **video})
        emit(summary)
        return 0
    print(
        f"{args.method} clustering; threshold chosen on {int((usable & dev).sum())} images of "
        f"{len(np.unique(names[usable & dev]))} people named in {pairs.name}:"
    )
    columns = [("threshold", "threshold"), ("bcubed_f", "BCubed F"), ("bcubed_precision", "B precision"),
               ("bcubed_recall", "B recall"), ("pairwise_f", "pairwise F"), ("clusters", "clusters"),
               ("people", "people")]  # fmt: skip
    digits = {"threshold": 2}
    rows = [{k: v if isinstance(v, int) else f"{v:.{digits.get(k, 4)}f}" for k, v in r.items()} for r in sweep]
    print(format_table(rows, columns))
    print(
        f"\nthreshold {threshold:.2f} on the other {scores['images']} images of {scores['people']} people: "
        f"BCubed F {scores['bcubed_f']:.4f} (precision {scores['bcubed_precision']:.4f}, recall "
        f"{scores['bcubed_recall']:.4f}), pairwise F {scores['pairwise_f']:.4f} (precision "
        f"{scores['pairwise_precision']:.4f}, recall {scores['pairwise_recall']:.4f}), {scores['clusters']} clusters "
        f"for {scores['people']} people"
    )
    if video is not None:
        _print_video(args, video)
    return 0


def _print_video(args: argparse.Namespace, video: dict) -> None:
    by = "labelled by eye" if args.labels is not None else "labelled by the stills"
    print(
        f"{args.video.name}, per track: {video['tracks']} tracks of {args.min_faces}+ faces, {video['images']} "
        f"{by}: BCubed F {video['bcubed_f']:.4f} (precision {video['bcubed_precision']:.4f}, recall "
        f"{video['bcubed_recall']:.4f}), pairwise F {video['pairwise_f']:.4f}, {video['clusters']} visitors for "
        f"{video['people']} people; all {video['tracks']} tracks: {video['visitors_all_tracks']} visitors"
    )


def _video_only(args: argparse.Namespace) -> int:
    """`eval cluster --video V --labels FILE` without --dataset: the worker's clustering at visitors.threshold."""
    from worker.visitors.cluster import chinese_whispers, online_labels

    if args.video is None or args.labels is None:
        raise FacewatchError("eval cluster needs --dataset, or --video with --labels")
    settings = settings_from_args(args)
    rng = np.random.default_rng(args.seed)
    merge_threshold = args.merge_threshold if args.merge_threshold is not None else settings.visitors.merge_threshold

    def cluster(x: np.ndarray, threshold: float) -> np.ndarray:
        if args.method == "whispers":
            return chinese_whispers(x, threshold, seed=args.seed)
        return online_labels(x, threshold, merge_threshold, order=rng.permutation(len(x)))

    threshold = settings.visitors.threshold
    video = _video_clusters(args, settings, cluster, threshold)
    if args.json:
        emit({"split": "video", "method": args.method, "threshold": threshold, **video})
        return 0
    print(f"{args.method} clustering at visitors.threshold {threshold:.2f}:")
    _print_video(args, video)
    return 0


def _video_clusters(args: argparse.Namespace, settings, cluster, threshold: float) -> dict:
    """Per-track clustering scores on ``--video``, tracks labelled by eye (``--labels``) or by the nearest of
    ``--stills``."""
    from worker.evaluation.cluster import (
        VideoTrack,
        cluster_scores,
        label_tracks,
        labels_by_eye,
        read_track_labels,
        video_tracks,
    )
    from worker.evaluation.openset import IMAGE_SUFFIXES
    from worker.vision.image import load_image
    from worker.visitors.cluster import online_labels

    if args.labels is None and (args.stills is None or not args.stills.is_dir()):
        raise FacewatchError("--video needs --labels FILE (by eye) or --stills DIR (one photo per person)")
    entries = read_track_labels(args.labels) if args.labels is not None else None
    merge_threshold = args.merge_threshold if args.merge_threshold is not None else settings.visitors.merge_threshold
    recognizer = FaceRecognizer(settings)
    tracks = [t for t in video_tracks(recognizer, args.video, settings.tracking) if t.faces >= args.min_faces]
    if entries is not None:
        labels = labels_by_eye(tracks, entries)
    else:
        stills = {}
        for path in sorted(p for p in args.stills.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            faces = recognizer.analyze([load_image(path, max_pixels=settings.images.max_pixels)])[0]
            if len(faces.boxes) == 1:  # a photo of several people labels nobody
                stills[path.stem] = faces.embeddings[0]
        labels = label_tracks(tracks, stills, settings.watchlist.match_distance)
    kept = [i for i, label in enumerate(labels) if label is not None]
    if not kept:
        raise FacewatchError(f"no track of {args.video} is labelled (--labels or --stills)")

    def by_track(chosen: list[VideoTrack]) -> np.ndarray:
        """The visitors of ``chosen``: online, as the worker assigns them (when each ends; tracks seen at the same
        time are two people); whispers over their embeddings."""
        vectors = np.stack([t.embedding for t in chosen])
        if args.method == "whispers":
            return cluster(vectors, threshold)
        order = np.argsort([t.ended for t in chosen], kind="stable")
        spans = [("video", t.started, t.ended) for t in chosen]
        return online_labels(vectors, threshold, merge_threshold, order=order, spans=spans)

    predicted = by_track([tracks[i] for i in kept])
    everyone = len(np.unique(by_track(tracks)))
    return {
        "tracks": len(tracks),
        "visitors_all_tracks": everyone,
        "labelled": {tracks[i].track_id: labels[i] for i in kept},
        "visitor_of": {tracks[i].track_id: int(v) for i, v in zip(kept, predicted, strict=True)},
        **cluster_scores([labels[i] for i in kept], predicted),
    }


def register_quality(kinds: argparse._SubParsersAction) -> None:
    """Add `eval quality`."""
    quality = kinds.add_parser(
        "quality",
        help="face quality vs strangers' false matches and enrolled people's true matches",
        description="Identifies every face of a detection set (strangers: none enrolled) and shrunk second photos "
        "of enrolled LFW people against a gallery of LFW people, and prints the match rates per face quality "
        "(worker/vision/quality.py). This is how decisions.min_quality was chosen (docs/accuracy.md).",
    )
    quality.add_argument("--strangers", required=True, type=Path, help="detection set: DIR/gt.jsonl and its images")
    quality.add_argument("--lfw", required=True, type=Path, help="folder of per-person LFW image folders")
    quality.add_argument("--gallery-size", type=int, default=1000, help="LFW people enrolled (default 1000)")
    quality.add_argument("--limit", type=int, help="measure only the first N strangers' faces")
    quality.add_argument("--json", action="store_true", help="one JSON object per quality bin")
    quality.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_flags(quality)
    quality.set_defaults(handler=run_quality)


def run_quality(args: argparse.Namespace) -> int:
    from worker.evaluation.quality import measure, quality_table, size_table

    if args.gallery_size < 1:
        raise FacewatchError("--gallery-size must be at least 1")
    settings = settings_from_args(args)
    strangers, enrolled = measure(
        settings, args.strangers, args.lfw, args.gallery_size, args.limit, progress=not args.quiet
    )
    tables = (quality_table(strangers, enrolled), size_table(strangers, enrolled))
    if args.json:
        for rows in tables:
            for row in rows:
                emit(row)
        return 0
    print(
        f"{len(strangers.status)} strangers' faces ({args.strangers}) and {len(enrolled.status)} probes of enrolled "
        f"people against {args.gallery_size} LFW people; match threshold {settings.watchlist.match_distance:g}"
    )
    for rows in tables:
        shown = [
            {k: (f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else v)) for k, v in row.items()}
            for row in rows
        ]
        print()
        print(format_table(shown, [(k, k.replace("_", " ")) for k in rows[0]]))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _iou(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def register_detect(kinds: argparse._SubParsersAction) -> None:
    """Add `eval detect`."""
    detect = kinds.add_parser(
        "detect",
        help="face detection: AP, recall and precision, recall by face height, speed",
        description="Face detectors against ground-truth boxes (DIR/gt.jsonl, docs/accuracy.md): matched "
        "at IoU >= --iou, greedily by descending score; faces marked ignore are neither misses nor false "
        "detections. Recall and precision are at each detector's own threshold; AP is the area under its "
        "precision-recall curve (VOC all-points). Detector settings (upsample, min_score, device, haar_*) "
        "come from --config and FACEWATCH_DETECTOR__* as for every command; --detector changes only the name.",
    )
    detect.add_argument(
        "--dataset", required=True, type=Path, metavar="DIR", help="folder holding gt.jsonl and its images"
    )
    detect.add_argument(
        "--detector",
        dest="detectors",
        action="append",
        choices=DETECTORS,
        metavar="NAME",
        help=f"detector to measure: {', '.join(DETECTORS)}; repeat to compare several in one run "
        "(default: the config's detector.name)",
    )
    detect.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N images of gt.jsonl")
    detect.add_argument(
        "--iou", type=_iou, default=0.5, help="IoU a detection needs with a face to find it (default 0.5)"
    )
    detect.add_argument("--plot", type=Path, metavar="FILE.png", help="write the precision-recall curves here")
    detect.add_argument("--json", action="store_true", help="one JSON object per detector")
    detect.add_argument("--quiet", action="store_true", help="no progress bars")
    detect.set_defaults(handler=run_detect)


def dataset_embedder(args: argparse.Namespace, face_choice: str) -> DatasetEmbedder:
    """The DatasetEmbedder the flags describe."""
    return DatasetEmbedder(
        FaceRecognizer(settings_from_args(args)),
        face_choice=face_choice,  # type: ignore[arg-type]
        fallback=args.fallback,
        flip_average=not args.no_flip,
        threads=args.threads,
        progress=not args.quiet,
        landmark_models=(68,) if args.also_68 else (),
    )


def _nn4_embeddings(args: argparse.Namespace, paths: list[Path]) -> tuple[np.ndarray, int]:
    """(embeddings of ``paths`` by the nn4.small2 of --model, faces HOG did not find) for `eval lfw --model`."""
    from worker.cli.model_cmd import load_weights
    from worker.runtime.progress import progress_bar
    from worker.training.data import align_images
    from worker.training.loop import embed_chips

    settings = settings_from_args(args)
    with progress_bar(total=len(paths), enabled=not args.quiet, desc="aligning", unit="image") as bar:
        faces = align_images(
            [(p, p.parent.name) for p in paths], settings.models.dir, True, bar.update, detect=not args.centred
        )
    if faces.skipped:  # unreadable images: the fallback box covers faceless ones
        raise FacewatchError(f"cannot read {len(faces.skipped)} LFW images, the first: {faces.skipped[0]}")
    model = load_weights(args.model, 0)
    return embed_chips(model, faces.small, flip_average=not args.no_flip), faces.fallbacks


def run_lfw(args: argparse.Namespace) -> int:
    pairs = read_pairs(args.pairs, args.lfw)
    paths = sorted({path for pair in pairs for path in (pair.a, pair.b)})
    if args.centred and args.model is None:
        raise FacewatchError("--centred goes with --model (dlib's pipeline always detects)")
    if args.model is not None:
        embeddings, failed = _nn4_embeddings(args, paths)
        result = argparse.Namespace(paths=paths, embeddings=embeddings, failed_detections=failed)
    else:
        result = dataset_embedder(args, "center").embed(paths, description="LFW images")
    row = {path: index for index, path in enumerate(result.paths)}
    a = result.embeddings[[row[pair.a] for pair in pairs]]
    b = result.embeddings[[row[pair.b] for pair in pairs]]
    distances = np.nan_to_num(np.linalg.norm(a - b, axis=1), nan=NO_FACE_DISTANCE)
    same = np.array([pair.same for pair in pairs])
    folds = np.array([pair.fold for pair in pairs])
    accuracies, thresholds = ten_fold(distances, same, folds)
    fpr, tpr, auc = roc(distances, same)
    accuracy = f"{accuracies.mean():.4f} ± {accuracies.std():.4f}"
    plot_roc(fpr, tpr, auc, accuracy, args.roc)
    summary = {
        "accuracy_mean": round(float(accuracies.mean()), 6),
        "accuracy_std": round(float(accuracies.std()), 6),
        "auc": round(auc, 6),
        "failed_detections": result.failed_detections,
    }
    if args.json:
        for fold, (fold_accuracy, threshold) in enumerate(zip(accuracies, thresholds, strict=True)):
            emit(
                {"fold": fold + 1, "accuracy": round(float(fold_accuracy), 6), "threshold": round(float(threshold), 6)}
            )
        emit(summary)
    else:
        split = " (one fold: dealt into 10)" if len(np.unique(folds)) == 1 else ""
        print(f"LFW {args.pairs.name}: {len(pairs)} pairs, {len(paths)} images, {len(accuracies)} folds{split}")
        for fold, (fold_accuracy, threshold) in enumerate(zip(accuracies, thresholds, strict=True)):
            print(f"  fold {fold + 1:2d}: accuracy {fold_accuracy:.4f} at threshold {threshold:.4f}")
        print(f"accuracy {accuracy}, AUC {auc:.5f}, thresholds {thresholds.mean():.4f} ± {thresholds.std():.4f}")
        print(f"images without a detected face: {result.failed_detections} (embedded from the fallback box)")
        print(f"ROC curve: {args.roc}", file=sys.stderr)
    return 0


def _embed_tree(
    args: argparse.Namespace, settings: Settings, people: set[str] | None = None
) -> tuple[dict[str, list[Path]], list[str], DatasetEmbeddings]:
    """embed_identity_tree of --dataset with the flags every `eval` of a folder tree shares."""
    from worker.evaluation.cache import embed_identity_tree

    return embed_identity_tree(
        args.dataset,
        settings,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
        use_cache=not args.no_cache,
        people=people,
        fallback=args.fallback,
        flip_average=not args.no_flip,
        threads=args.threads,
    )


def _people(args: argparse.Namespace) -> set[str] | None:
    """--people-from's people, or None (everyone)."""
    from worker.training.data import lfw_pair_people

    return lfw_pair_people(args.people_from) if args.people_from is not None else None


def run_identify(args: argparse.Namespace) -> int:
    from worker.evaluation.openset import metrics_from_distances, open_set_distances, split_open_set
    from worker.evaluation.openset_plots import plot_det, plot_distance_histograms

    for plot in (args.det, args.histograms):
        if not plot.parent.is_dir():  # checked first: finding out after the embedding would waste it
            raise FacewatchError(f"{plot}: folder {plot.parent} does not exist")
    settings = settings_from_args(args)
    # Reported besides the FPIR-derived thresholds: the configured watchlist thresholds (match, unknown).
    fixed_thresholds = (settings.watchlist.match_distance, settings.watchlist.unknown_threshold)
    if args.compare_classifiers:
        return _compare_classifiers(args, settings)
    identities, _, result = _embed_tree(args, settings, _people(args))
    split = split_open_set(identities)
    row = {path: index for index, path in enumerate(result.paths)}
    vectors = result.embeddings
    distances = open_set_distances(
        vectors[[row[path] for path in split.gallery]],
        split.gallery_labels,
        vectors[[row[path] for path in split.mated]],
        split.mated_labels,
        vectors[[row[path] for path in split.non_mated]],
    )
    metrics = metrics_from_distances(distances, fixed_thresholds=fixed_thresholds)
    marks = {
        "FPIR 1%": metrics["threshold_at_fpir_1pct"],
        "FPIR 0.1%": metrics["threshold_at_fpir_0_1pct"],
        "match_threshold": settings.watchlist.match_distance,
        "unknown_threshold": settings.watchlist.unknown_threshold,
    }
    title = f"{args.dataset.name}: gallery {len(split.gallery)}, {len(split.non_mated)} strangers"
    plot_det(distances, marks, args.det, title)
    plot_distance_histograms(distances, marks, args.histograms, title)
    summary = {
        **metrics,
        "identities": len(identities),
        "gallery": len(split.gallery),
        "mated_probes": len(split.mated),
        "non_mated_probes": len(split.non_mated),
        "images": len(result.paths),
        "failed_detections": result.failed_detections,
        "no_embedding": int(np.isnan(vectors).any(axis=1).sum()),
    }
    print(f"DET curve: {args.det}; distance histograms: {args.histograms}", file=sys.stderr)
    if args.json:
        emit(summary)
        return 0
    print(
        f"open-set identification on {args.dataset}: {summary['identities']} identities, gallery "
        f"{summary['gallery']}, {summary['mated_probes']} mated and {summary['non_mated_probes']} non-mated probes"
    )
    print(f"rank-1 identification rate: {metrics['rank1']:.4f}")
    for tag, label in (("1pct", "1%"), ("0_1pct", "0.1%")):
        print(
            f"FPIR {label:>4}: TPIR {metrics[f'tpir_at_fpir_{tag}']:.4f} at distance <= "
            f"{metrics[f'threshold_at_fpir_{tag}']:.4f} (measured FPIR {metrics[f'fpir_measured_{tag}']:.4f})"
        )
    for threshold in fixed_thresholds:
        tag = f"{threshold:g}".replace(".", "_")
        print(f"distance <= {threshold:g}: TPIR {metrics[f'tpir_at_{tag}']:.4f}, FPIR {metrics[f'fpir_at_{tag}']:.4f}")
    print(
        f"images without a detected face: {summary['failed_detections']} (embedded from the fallback box); "
        f"without any embedding: {summary['no_embedding']}"
    )
    return 0


def _compare_classifiers(args: argparse.Namespace, settings: Settings) -> int:
    """`eval identify --compare-classifiers`: the nearest-template rule and the SVM on one split."""
    from worker.evaluation.classifiers import compare_rules, split_with_templates

    identities, _, result = _embed_tree(args, settings, _people(args))
    split = split_with_templates(identities, args.templates)
    row = {path: index for index, path in enumerate(result.paths)}
    vectors = result.embeddings

    def rows(paths: list[Path]) -> np.ndarray:
        return vectors[[row[path] for path in paths]]

    config = settings.watchlist
    results = compare_rules(
        rows(split.gallery), split.gallery_labels, rows(split.mated), split.mated_labels, rows(split.non_mated), config
    )
    setting = {
        "templates": args.templates,
        "identities": len(split.names),
        "gallery": len(split.gallery),
        "mated_probes": len(split.mated),
        "non_mated_probes": len(split.non_mated),
        "match_threshold": config.match_distance,
        "unknown_threshold": config.unknown_threshold,
        "svm_min_probability": config.svm_min_probability,
    }
    if args.json:
        for rule in results:
            emit({**setting, **rule.as_dict()})
        return 0
    print(
        f"{args.dataset}: {setting['identities']} identities with {args.templates} templates each, "
        f"{setting['mated_probes']} mated and {setting['non_mated_probes']} non-mated probes; match distance "
        f"{config.match_distance:g}, unknown above {config.unknown_threshold:g}, SVM probability >= "
        f"{config.svm_min_probability:g}"
    )
    header = ("rule", "correct match", "wrong match", "mated uncertain", "stranger matched", "stranger uncertain")
    print("  ".join(f"{h:>18}" for h in header))
    for rule in results:
        values = (rule.correct, rule.wrong, rule.mated_uncertain, rule.false_match, rule.stranger_uncertain)
        print(f"{rule.rule:>18}  " + "  ".join(f"{v:>18.4f}" for v in values))
    return 0


def _fixed(value: float | None, digits: int) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def run_detect(args: argparse.Namespace) -> int:
    """`eval detect`: every --detector over the dataset in turn, then the table (or a JSON line each)."""
    settings = settings_from_args(args)
    if args.plot and not args.plot.parent.is_dir():
        # Checked first: finding out after minutes of detection would waste them.
        raise FacewatchError(f"--plot {args.plot}: folder {args.plot.parent} does not exist")
    truths = read_ground_truth(args.dataset, args.limit)
    gt_file = args.dataset / GT_FILE
    names = list(dict.fromkeys(args.detectors or [settings.detector.name]))
    unreadable: set[int] = set()

    def report_unreadable(truth: ImageTruth, error: ImageError) -> None:
        # Every detector meets the same broken image: say it once.
        if truth.line not in unreadable:
            unreadable.add(truth.line)
            report_error(f"{error} ({gt_file}:{truth.line}; left out of the evaluation)")

    scores: dict[str, DetectionScore] = {}
    rows = []
    for name in names:
        config = settings.detector.model_copy(update={"name": name})
        recognizer = FaceRecognizer(settings.model_copy(update={"detector": config}))
        recognizer.detector  # noqa: B018 - load the model now: a missing file fails before any work
        run = run_detector(
            recognizer.detect,  # applies detector.min_face_size, as the worker does
            truths,
            gt_file,
            max_pixels=settings.images.max_pixels,
            on_unreadable=report_unreadable,
            description=f"detecting with {name}",
            progress=not args.quiet,
        )
        score = scores[name] = score_detections(truths, run.detections, args.iou)
        record = {
            "detector": name,
            "dataset": str(args.dataset),
            "iou_threshold": args.iou,
            **score.summary(),
            "unreadable_images": len(unreadable),
            "images_per_second": None if np.isnan(run.images_per_second) else round(run.images_per_second, 3),
            "detection_seconds": round(run.seconds, 3),
        }
        if args.json:
            emit(record)
        rows.append(record)
    if args.plot:
        plot_precision_recall(scores, args.plot, f"{args.dataset.name}: {rows[0]['faces']} faces, IoU >= {args.iou:g}")
    if not args.json:
        first = rows[0]
        print(
            f"face detection on {args.dataset.name}: {first['images']} images, {first['faces']} faces "
            f"({first['ignored_faces']} ignored), IoU >= {args.iou:g}"
        )
        heights = ", ".join(f"{label} px {count}" for label, count in first["faces_by_height"].items())
        print(f"faces by height: {heights}")
        columns = [
            ("detector", "detector"),
            ("ap", "AP"),
            ("recall", "recall"),
            ("precision", "precision"),
            ("detections", "detections"),
            *((f"h{label}", f"recall {label}") for label, _, _ in HEIGHT_BUCKETS),
            ("speed", "images/s"),
        ]
        table = [
            {
                "detector": row["detector"],
                "ap": _fixed(row["average_precision"], 4),
                "recall": _fixed(row["recall"], 4),
                "precision": _fixed(row["precision"], 4),
                "detections": row["detections"],
                **{f"h{label}": _fixed(value, 3) for label, value in row["recall_by_height"].items()},
                "speed": _fixed(row["images_per_second"], 2),
            }
            for row in rows
        ]
        print(format_table(table, columns))
        if unreadable:
            print(f"images that could not be read: {len(unreadable)} (left out)")
    if args.plot:
        print(f"precision-recall curves: {args.plot}", file=sys.stderr)
    return 0
