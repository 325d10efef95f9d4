"""`facewatch watchlist ...` (enroll, list, remove, export, restore, purge) and `facewatch identify`.

Exit status 75 (EX_TEMPFAIL, "try again") means the change was made but a removed person's data is
still on disk: another connection's read kept the store from being checkpointed (docs/watchlist.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.cli.common import add_model_flags, emit, settings_from_args
from worker.cli.faces import NO_FACE_HELP, add_image_arguments
from worker.config import Settings
from worker.errors import WatchlistError
from worker.watchlist.store import DEFAULT_MODEL_VERSION, Identity, WatchlistStore

ERASURE_PENDING_EXIT = 75  # sysexits' EX_TEMPFAIL: the erasure is retried, by `purge` or the worker

if TYPE_CHECKING:
    from worker.watchlist.enroll import Enroller, EnrollReport


def _add_store_flag(parser: argparse.ArgumentParser, repeat: bool = False) -> None:
    """--store; ``repeat``: the sub-command's copy, which must not reset a value given before it."""
    extra: dict[str, Any] = {"default": argparse.SUPPRESS} if repeat else {}
    parser.add_argument(
        "--store",
        dest="watchlist_store",
        metavar="PATH",
        help="watchlist SQLite file (config watchlist.store)",
        **extra,
    )
    if repeat:
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON lines on stdout")


def _add_enrollment_flags(parser: argparse.ArgumentParser) -> None:
    """The gates and video sampling of enrollment, each overriding a key of the enrollment config section."""
    from worker.watchlist.enroll import FLAGS

    group = parser.add_argument_group("quality gates and videos (each overrides enrollment.<key>)")
    group.add_argument(
        FLAGS["min_face_size"], dest="enroll_min_face_size", type=int, metavar="PX",
        help="least face width in pixels (min_face_size)",
    )  # fmt: skip
    group.add_argument(
        FLAGS["min_sharpness"], dest="enroll_min_sharpness", type=float, metavar="S",
        help="least sharpness: variance of the Laplacian of the aligned 150x150 face (min_sharpness)",
    )  # fmt: skip
    group.add_argument(
        FLAGS["duplicate_distance"], dest="enroll_duplicate_distance", type=float, metavar="D",
        help="skip faces closer than this to one the person has (duplicate_distance)",
    )  # fmt: skip
    group.add_argument(
        FLAGS["largest"], dest="enroll_largest", action=argparse.BooleanOptionalAction, default=None,
        help="photos with several faces: take the largest (largest)",
    )  # fmt: skip
    group.add_argument(
        FLAGS["video_frames"], dest="enroll_video_frames", type=int, metavar="N",
        help="frames analysed per video, spread over it (video_frames)",
    )  # fmt: skip
    group.add_argument(
        FLAGS["video_faces"], dest="enroll_video_faces", type=int, metavar="N",
        help="most faces enrolled from one video (video_faces)",
    )  # fmt: skip
    group.add_argument(
        FLAGS["video_seconds"], dest="enroll_video_seconds", type=float, metavar="S",
        help="rtsp:// streams: stop reading after this long (video_seconds)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bars (none is drawn off a terminal anyway)")


def register(commands: argparse._SubParsersAction) -> None:
    """Add `watchlist` (with its sub-commands) and `identify` to the top-level parser."""
    watchlist = commands.add_parser(
        "watchlist",
        help="manage the watchlist: enroll, list, show, remove, export, restore, purge",
        description="The watchlist of identities and their face templates (an SQLite file).",
    )
    _add_store_flag(watchlist)
    watchlist.add_argument("--json", action="store_true", help="JSON lines on stdout instead of text")
    subs = watchlist.add_subparsers(dest="watchlist_command", metavar="SUBCOMMAND", required=True)

    add = subs.add_parser(
        "add",
        help="enroll photos and videos of one person",
        description="Enroll one person from photos, video files and rtsp:// URLs (mixed as you like). "
        "A video gives the best faces of its dominant track: the face seen in most of its frames.",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("images", nargs="+", metavar="SOURCE", help="a photo, a video file or an rtsp:// URL")
    add.add_argument("--id", dest="identity_id", help="identity id (default: a new UUID; an existing id adds photos)")
    add.add_argument("--metadata", help="free-form JSON object stored with the identity")
    _add_enrollment_flags(add)
    add_model_flags(add)
    add.set_defaults(handler=run_add)

    imp = subs.add_parser("import", help="enroll a folder with one sub-folder of photos (and videos) per person")
    imp.add_argument("folder", metavar="DIR")
    _add_enrollment_flags(imp)
    add_model_flags(imp)
    imp.set_defaults(handler=run_import)

    lister = subs.add_parser("list", help="every identity")
    lister.set_defaults(handler=run_list)
    show = subs.add_parser("show", help="one identity and its templates (never the embeddings)")
    show.add_argument("identity_id", metavar="ID")
    show.set_defaults(handler=run_show)
    remove = subs.add_parser("remove", help="delete an identity and all its templates, for good")
    remove.add_argument("identity_id", metavar="ID")
    remove.set_defaults(handler=run_remove)
    export = subs.add_parser("export", help="write the watchlist to a JSON-lines file (biometric data!)")
    export.add_argument("file", metavar="FILE")
    export.set_defaults(handler=run_export)
    restore = subs.add_parser("restore", help="replace the watchlist with an export file (atomic)")
    restore.add_argument("file", metavar="FILE")
    restore.set_defaults(handler=run_restore)
    stats = subs.add_parser("stats", help="counts, version, pending erasure and unpublished changes")
    stats.set_defaults(handler=run_stats)
    purge = subs.add_parser(
        "purge",
        help="finish a pending erasure: checkpoint the store and check that removed data is gone from its files",
        description="Exit status 0 when verified, 75 while another connection's read still blocks the checkpoint "
        "(it waits watchlist.erasure_wait_s for it).",
    )
    purge.set_defaults(handler=run_purge)
    replicate = subs.add_parser(
        "replicate",
        help="publish every identity to watchlist.replication_topic (a full resync of all worker replicas)",
    )
    replicate.set_defaults(handler=run_replicate)
    for sub in (add, imp, lister, show, remove, export, restore, stats, purge, replicate):
        _add_store_flag(sub, repeat=True)  # also accepted after the sub-command

    identify = commands.add_parser(
        "identify",
        help="identify the faces in images (and folders of images) against the watchlist",
        description='One JSON line per face: {"image", "box", "status", "identity", "name", "score", "distance"}. '
        "status is match, uncertain or unknown; identity and name are null unless it is a match. "
        f"{NO_FACE_HELP}",
    )
    _add_store_flag(identify)
    add_model_flags(identify)
    add_image_arguments(identify)
    identify.add_argument(
        "--classifier",
        choices=("nearest", "svm"),
        default="nearest",
        help="nearest: FAISS nearest templates and the two thresholds (default); svm: OpenFace's linear SVM "
        "over all templates, trained on the spot, a match when its class probability reaches --svm-threshold "
        "(score is that probability; needs 2+ identities)",
    )
    identify.add_argument("--svm-threshold", type=float, default=0.4, help="svm: least class probability (0.4)")
    identify.set_defaults(handler=run_identify)


# -- helpers ----------------------------------------------------------------------------------


def _open_store(settings: Settings, must_exist: bool) -> WatchlistStore:
    path = Path(settings.watchlist.store)
    if must_exist and not path.is_file():
        raise WatchlistError(f"watchlist store {path} does not exist (enroll someone first: facewatch watchlist add)")
    return WatchlistStore(path, erasure_wait_s=settings.watchlist.erasure_wait_s)


def _open_for_writing(settings: Settings, must_exist: bool) -> tuple[WatchlistStore, str | None]:
    """The store, for a command that changes it, after publishing what an earlier command left unpublished.

    Returns the store and, when Kafka could not be reached for that, the error: Kafka being away
    must not stop a local change (above all a removal), and the command reports it at its end.
    """
    store = _open_store(settings, must_exist)
    topic = settings.watchlist.replication_topic
    if topic and store.published_version(topic) < store.version:
        try:
            count = _replicate(settings, store, all_identities=False)
        except WatchlistError as exc:
            return store, str(exc)
        except BaseException:
            store.close()
            raise
        print(f"published {count} identit{'y' if count == 1 else 'ies'} an earlier command left unpublished to "
              f"{topic}", file=sys.stderr)  # fmt: skip
    return store, None


def _index_path(settings: Settings) -> Path:
    return Path(settings.watchlist.index_path or f"{settings.watchlist.store}.index")


def _refresh_saved_index(settings: Settings, store: WatchlistStore) -> None:
    """Bring a saved index up to date after a change, so a removed person leaves that file too."""
    from worker.watchlist.index import WatchlistIndex

    path = _index_path(settings)
    if path.is_file():
        model = store.model_version or DEFAULT_MODEL_VERSION
        WatchlistIndex.load_or_rebuild(store, path, settings.watchlist.index_kind, model, progress=False)


def _replicate(settings: Settings, store: WatchlistStore, all_identities: bool) -> int:
    """Publish to the replication topic every identity (``all_identities``) or those changed since the cursor."""
    from worker.watchlist.replication import WatchlistPublisher

    publisher = WatchlistPublisher(settings.kafka, str(settings.watchlist.replication_topic))
    try:
        return publisher.publish_all(store) if all_identities else publisher.publish_pending(store)
    finally:
        publisher.close()


def _changed(settings: Settings, store: WatchlistStore, unreachable: str | None) -> int:
    """After a change: update the saved index, finish erasure, replicate; the exit status (0, or 75: pending).

    ``unreachable``: Kafka's error at the start of the command (no second wait for it).
    """
    _refresh_saved_index(settings, store)
    status = _erasure_status(store)
    topic = settings.watchlist.replication_topic
    if topic and store.published_version(topic) < store.version:
        try:
            if unreachable:
                raise WatchlistError(unreachable)
            count = _replicate(settings, store, all_identities=False)
        except WatchlistError as exc:
            raise WatchlistError(
                f"{exc}; the change is kept in the store and published by the next watchlist command "
                "(or facewatch watchlist replicate)"
            ) from None
        print(f"replicated {count} identit{'y' if count == 1 else 'ies'} to {topic}", file=sys.stderr)
    return status


def _erasure_status(store: WatchlistStore) -> int:
    """Retry a pending erasure; 0 when none is left, else a warning on stderr and ERASURE_PENDING_EXIT."""
    if store.erasure_pending is None:
        return 0
    erasure = store.finish_erasure()
    if erasure.complete:
        return 0
    print(
        f"warning: {erasure.detail}. It is retried by the next watchlist command, by `facewatch watchlist purge` "
        "and by a worker using this store (facewatch_watchlist_erasure_pending).",
        file=sys.stderr,
    )
    return ERASURE_PENDING_EXIT


def _identity_record(identity: Identity) -> dict[str, Any]:
    return {
        "id": identity.id,
        "name": identity.name,
        "templates": identity.templates,
        "metadata": identity.metadata,
        "created": round(identity.created, 3),
    }


def _print_report(report: EnrollReport, as_json: bool) -> None:
    if as_json:
        emit(report.as_dict())
        return
    identity = report.identity.id if report.identity else "not enrolled"
    print(f"{report.name} ({identity}): {len(report.accepted)} face(s) accepted, {len(report.rejected)} rejected")
    for video in report.videos:
        enrolled = sum(a.path.startswith(f"{video.source}#t=") for a in report.accepted)
        tracks = (
            f"{len(video.tracks)} track(s) ({', '.join(map(str, video.tracks))} faces)" if video.tracks else "no face"
        )
        dominant = (
            f"; the dominant track ({video.start:.1f}-{video.end:.1f} s): {video.usable} face(s) passed the gates, "
            f"{enrolled} enrolled"
        )
        print(f"  video {video.source}: {video.frames} frames, {tracks}{dominant if video.tracks else ''}")
    for rejected in report.rejected:
        print(f"  rejected {rejected.path}: {rejected.reason}")


def _enroller(settings: Settings, store: WatchlistStore, progress: bool = True) -> Enroller:
    from worker.recognition import FaceRecognizer
    from worker.stream.video_faces import VideoFaceReader
    from worker.watchlist.enroll import Enroller, EnrollRules

    recognizer = FaceRecognizer(settings)
    reader = VideoFaceReader(recognizer, settings.tracking, progress=progress)
    return Enroller(recognizer, store, EnrollRules.from_config(settings.enrollment), progress, reader)


def _nothing_enrolled(report: EnrollReport) -> WatchlistError:
    """The error of an `add` that enrolled nothing: the one reason, or a pointer to the report."""
    if len(report.rejected) == 1:
        (only,) = report.rejected
        detail = only.reason if only.path in only.reason else f"{only.path}: {only.reason}"
        return WatchlistError(f"nothing enrolled for {report.name}: {detail}")
    return WatchlistError(f"nothing enrolled for {report.name}: every photo and video was rejected (reasons above)")


# -- sub-commands -----------------------------------------------------------------------------


def _no_constant(name: str) -> None:
    """NaN and Infinity are not JSON: stored, they would make `list --json` print invalid JSON."""
    raise ValueError(f"{name} is not a JSON value")


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (escape sequences) shown escaped, e.g. ESC as \\u001b."""
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def run_add(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    metadata = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as exc:
            raise WatchlistError(f"--metadata is not valid JSON: {exc}") from exc
        if not isinstance(metadata, dict):
            raise WatchlistError('--metadata must be a JSON object, e.g. \'{"team": "blue"}\'')
    store, unreachable = _open_for_writing(settings, must_exist=False)
    with store:
        report = _enroller(settings, store, not args.quiet).enroll(args.name, args.images, metadata, args.identity_id)
        _print_report(report, args.json)
        if not report.accepted:
            raise _nothing_enrolled(report)
        return _changed(settings, store, unreachable)


def run_import(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    store, unreachable = _open_for_writing(settings, must_exist=False)
    with store:
        reports = _enroller(settings, store, not args.quiet).import_tree(args.folder)
        for report in reports:
            _print_report(report, args.json)
        if not args.json:
            accepted = sum(len(r.accepted) for r in reports)
            rejected = sum(len(r.rejected) for r in reports)
            print(f"imported {accepted} template(s) from {args.folder}; {rejected} rejected")
        return _changed(settings, store, unreachable)


def run_list(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    with _open_store(settings, must_exist=True) as store:
        identities = store.list_identities()
    for identity in identities:
        if args.json:
            emit(_identity_record(identity))
        else:
            print(f"{identity.id}  {identity.templates:3d} template(s)  {printable(identity.name)}")
    if not args.json:
        print(f"{len(identities)} identit{'y' if len(identities) == 1 else 'ies'}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    with _open_store(settings, must_exist=True) as store:
        identity = store.get_identity(args.identity_id)
        templates = store.templates(identity.id)
    record = _identity_record(identity)
    record["templates"] = [
        {
            "id": t.id,
            "source": t.source,
            "quality": t.quality,
            "model_version": t.model_version,
            "created": round(t.created, 3),
        }
        for t in templates
    ]
    if args.json:
        emit(record)
        return 0
    print(f"{identity.name} ({identity.id}), {len(templates)} template(s)")
    if identity.metadata:
        print(f"  metadata: {json.dumps(identity.metadata)}")
    for template in record["templates"]:
        quality = "-" if template["quality"] is None else f"{template['quality']:.2f}"
        print(f"  template {template['id']}: quality {quality}, from {template['source'] or '-'}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    store, unreachable = _open_for_writing(settings, must_exist=True)
    with store:
        identity = store.get_identity(args.identity_id)
        removed = store.remove_identity(identity.id)
        status = _changed(settings, store, unreachable)
    erasure = "complete" if status == 0 else "pending"
    if args.json:
        emit({"removed": identity.id, "templates": len(removed), "erasure": erasure})
    elif status == 0:
        print(f"removed {identity.id} and its {len(removed)} template(s); erasure verified on disk")
    else:
        print(f"removed {identity.id} and its {len(removed)} template(s); ERASURE PENDING (see the warning)")
    return status


def run_export(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    with _open_store(settings, must_exist=True) as store:
        counts = store.export(args.file)
    if args.json:
        emit({"file": args.file, **counts})
    else:
        print(f"exported {counts['identities']} identities, {counts['templates']} templates to {args.file}")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if not Path(args.file).is_file():
        raise WatchlistError(f"{args.file} does not exist")
    store, unreachable = _open_for_writing(settings, must_exist=False)
    with store:
        counts = store.restore(args.file)
        status = _changed(settings, store, unreachable)
    if args.json:
        emit({"file": args.file, **counts})
    else:
        print(f"restored {counts['identities']} identities, {counts['templates']} templates from {args.file}")
    return status


def run_stats(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    topic = settings.watchlist.replication_topic
    with _open_store(settings, must_exist=True) as store:
        stats = store.stats()
        problems = store.verify()
        pending = store.erasure_pending is not None
        if topic:
            from worker.watchlist.replication import unpublished

            stats["unpublished"] = unpublished(store, topic)
    if pending:
        problems.append("erasure pending: removed data may still be in the file (run facewatch watchlist purge)")
    record = {"store": str(settings.watchlist.store), **stats, "healthy": not problems, "problems": problems}
    if args.json:
        emit(record)
    else:
        unsent = stats.get("unpublished")
        waiting = f", {unsent} identities not yet published to {topic}" if unsent else ""
        print(
            f"{record['store']}: {stats['identities']} identities, {stats['templates']} templates, "
            f"version {stats['version']}{waiting}, {'healthy' if not problems else 'PROBLEMS: ' + '; '.join(problems)}"
        )
    return 0 if not problems else 1


def run_purge(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    with _open_store(settings, must_exist=True) as store:
        pending = store.erasure_pending
        status = _erasure_status(store)
    done = status == 0
    if args.json:
        emit({"store": str(settings.watchlist.store), "erasure": "complete" if done else "pending"})
    elif pending is None:
        print("no erasure was pending")
    elif done:
        print("pending erasure completed: removed data checkpointed out of the WAL and not found in the files")
    return status


def run_identify(args: argparse.Namespace) -> int:
    from worker.cli.faces import ImageRun
    from worker.recognition import FaceRecognizer
    from worker.watchlist.identify import Identifier
    from worker.watchlist.index import WatchlistIndex

    settings = settings_from_args(args)
    config = settings.watchlist
    with _open_store(settings, must_exist=True) as store:
        recognizer = FaceRecognizer(settings)
        model = recognizer.embedder.model_version
        index = WatchlistIndex.load_or_rebuild(store, _index_path(settings), config.index_kind, model, progress=False)
        identifier = Identifier.from_config(store, index, config)
        svm = None
        if args.classifier == "svm":
            from worker.watchlist.svm import SvmClassifier

            svm = SvmClassifier.from_store(store, threshold=args.svm_threshold)
        run = ImageRun(args, "identify")
        for batch in run.batches(settings.images.max_pixels):
            faces = recognizer.analyze([image for _, image in batch])
            found = [(path, box) for (path, _), f in zip(batch, faces, strict=True) for box in f.boxes]
            if not found:
                for path, _ in batch:
                    run.done(path, 0)
                continue
            embeddings = np.concatenate([f.embeddings for f in faces])
            results = identifier.identify(embeddings)
            for row, ((path, box), result) in enumerate(zip(found, results, strict=True)):
                record = {
                    "image": path,
                    "box": box.as_list(),
                    "status": result.status,
                    "identity": result.identity_id,
                    "name": result.name,
                    "score": round(result.score, 4),
                    "distance": round(result.distance, 4) if math.isfinite(result.distance) else None,
                }
                if svm is not None:
                    (prediction,) = svm.predict(embeddings[row : row + 1])
                    names = store.names([prediction.candidate_id])
                    record.update(
                        status="match" if prediction.identity_id else "unknown",
                        identity=prediction.identity_id,
                        name=names.get(prediction.identity_id) if prediction.identity_id else None,
                        score=round(prediction.probability, 4),
                    )
                emit(record)
            for (path, _), f in zip(batch, faces, strict=True):
                run.done(path, len(f.boxes))
    # Each unreadable image was already reported on stderr, one line each.
    return run.finish()


def run_replicate(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    topic = settings.watchlist.replication_topic
    if not topic:
        raise WatchlistError("watchlist.replication_topic is not set (FACEWATCH_WATCHLIST__REPLICATION_TOPIC)")
    with _open_store(settings, must_exist=True) as store:
        count = _replicate(settings, store, all_identities=True)
    if args.json:
        emit({"topic": topic, "identities": count})
    else:
        print(f"published {count} identities to {topic}")
    return 0
