"""`facewatch watchlist ...` (enroll, list, rename, remove, export, restore, purge, rekey) and `facewatch identify`.

The operations themselves are worker/admin/service.py's, shared with the admin API; this module
parses arguments and prints results.

Exit status 75 (EX_TEMPFAIL, "try again") means the change was made but a removed person's data is
still on disk: another connection's read kept the store from being checkpointed (docs/watchlist.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.admin.service import (
    WatchlistService,
    face_record,
    nothing_enrolled,
)
from worker.cli.common import add_model_flags, emit, settings_from_args
from worker.cli.faces import NO_FACE_HELP, add_image_arguments
from worker.errors import WatchlistError

if TYPE_CHECKING:
    from worker.watchlist.enroll import EnrollReport


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


_REF_HELP = "the identity's id, or its name when no other identity has that name"


def register(commands: argparse._SubParsersAction) -> None:
    """Add `watchlist` (with its sub-commands) and `identify` to the top-level parser."""
    watchlist = commands.add_parser(
        "watchlist",
        help="manage the watchlist: enroll, list, show, rename, remove, export, restore, purge, rekey",
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
    existing = add.add_mutually_exclusive_group()
    existing.add_argument(
        "--merge", dest="existing", action="store_const", const="merge", default="refuse",
        help="NAME is already enrolled: add these photos to that identity (default: refuse)",
    )  # fmt: skip
    existing.add_argument(
        "--new", dest="existing", action="store_const", const="new",
        help="NAME is already enrolled: make a second identity with the same name, deliberately",
    )  # fmt: skip
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
    show.add_argument("identity_id", metavar="ID|NAME", help=_REF_HELP)
    show.set_defaults(handler=run_show)
    rename = subs.add_parser("rename", help="change an identity's name (and, with --metadata, its metadata)")
    rename.add_argument("identity_id", metavar="ID|NAME", help=_REF_HELP)
    rename.add_argument("name", metavar="NAME", nargs="?", help="the new name (omitted: keep the name)")
    rename.add_argument("--metadata", help="replace the metadata with this JSON object")
    rename.set_defaults(handler=run_rename)
    remove = subs.add_parser("remove", help="delete an identity and all its templates, for good")
    remove.add_argument("identity_id", metavar="ID|NAME", help=_REF_HELP)
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
    rekey = subs.add_parser(
        "rekey",
        help="re-encrypt the store in place with a new key (the current key: watchlist.encryption_key[_file])",
        description="One transaction: every name, metadata, source and embedding is decrypted with the configured "
        "key (none: the store is not encrypted yet) and encrypted with the new one; the old ciphertexts are then "
        "checkpointed out of the WAL and checked for in the files, like a removal (exit status 75 while that is "
        "pending). Stop the workers using the store first, and restart them with the new key.",
    )
    new_key = rekey.add_mutually_exclusive_group(required=True)
    new_key.add_argument(
        "--new-key-file", metavar="FILE", help="file holding the new key, base64 of 32 bytes (openssl rand -base64 32)"
    )
    new_key.add_argument("--decrypt", action="store_true", help="store the values in plaintext from now on")
    rekey.set_defaults(handler=run_rekey)
    for sub in (add, imp, lister, show, rename, remove, export, restore, stats, purge, replicate, rekey):
        _add_store_flag(sub, repeat=True)  # also accepted after the sub-command

    identify = commands.add_parser(
        "identify",
        help="identify the faces in images (and folders of images) against the watchlist",
        description='One JSON line per face: {"image", "box", "status", "identity", "name", "score", "distance", '
        '"confidence", "threshold"}. status is match, uncertain or unknown; identity and name are null unless it '
        "is a match; confidence is calibrated from false-match rates measured at that distance (docs/accuracy.md); "
        "threshold is the match distance. "
        f"{NO_FACE_HELP}",
    )
    _add_store_flag(identify)
    add_model_flags(identify)
    add_image_arguments(identify)
    identify.add_argument(
        "--classifier",
        choices=("nearest", "svm"),
        default=None,
        help="nearest: the nearest template's identity and the two distance thresholds; svm: OpenFace's linear "
        "SVM over the templates chooses among the nearest candidates, a match when its class probability "
        "reaches --svm-threshold and the candidate lies within the unknown threshold (confidence is that "
        "probability; refused when an identity has fewer than watchlist.svm_min_templates templates). "
        "Default: watchlist.classifier (nearest)",
    )
    identify.add_argument(
        "--svm-threshold",
        type=float,
        default=None,
        help="svm: least class probability for a match (watchlist.svm_min_probability, 0.3)",
    )
    identify.set_defaults(handler=run_identify)


# -- helpers ----------------------------------------------------------------------------------


def _service(args: argparse.Namespace, progress: bool = False) -> WatchlistService:
    """The shared watchlist operations (worker/admin/service.py), their notes printed on stderr."""
    return WatchlistService(settings_from_args(args), notify=_warn, progress=progress)


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


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


# -- sub-commands -----------------------------------------------------------------------------


def _no_constant(name: str) -> None:
    """NaN and Infinity are not JSON: stored, they would make `list --json` print invalid JSON."""
    raise ValueError(f"{name} is not a JSON value")


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (escape sequences) shown escaped, e.g. ESC as \\u001b."""
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def run_add(args: argparse.Namespace) -> int:
    metadata = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as exc:
            raise WatchlistError(f"--metadata is not valid JSON: {exc}") from exc
        if not isinstance(metadata, dict):
            raise WatchlistError('--metadata must be a JSON object, e.g. \'{"team": "blue"}\'')
    service = _service(args, progress=not args.quiet)
    report, outcome = service.enroll(args.name, args.images, metadata, args.identity_id, existing=args.existing)
    _print_report(report, args.json)
    if outcome is None:
        raise nothing_enrolled(report)
    return outcome.status


def run_import(args: argparse.Namespace) -> int:
    reports, outcome = _service(args, progress=not args.quiet).import_tree(args.folder)
    for report in reports:
        _print_report(report, args.json)
    if not args.json:
        accepted = sum(len(r.accepted) for r in reports)
        rejected = sum(len(r.rejected) for r in reports)
        print(f"imported {accepted} template(s) from {args.folder}; {rejected} rejected")
    return outcome.status


def run_list(args: argparse.Namespace) -> int:
    identities = _service(args).list_identities()
    for identity in identities:
        if args.json:
            emit(identity)
        else:
            print(f"{identity['identity']}  {identity['templates']:3d} template(s)  {printable(identity['name'])}")
    if not args.json:
        print(f"{len(identities)} identit{'y' if len(identities) == 1 else 'ies'}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    record = _service(args).show(args.identity_id)
    if args.json:
        emit(record)
        return 0
    print(f"{printable(record['name'])} ({record['identity']}), {len(record['templates'])} template(s)")
    if record["metadata"]:
        print(f"  metadata: {json.dumps(record['metadata'])}")
    for template in record["templates"]:
        quality = "-" if template["quality"] is None else f"{template['quality']:.2f}"
        print(f"  template {template['id']}: quality {quality}, from {template['source'] or '-'}")
    return 0


def run_rename(args: argparse.Namespace) -> int:
    metadata = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as exc:
            raise WatchlistError(f"--metadata is not valid JSON: {exc}") from exc
        if not isinstance(metadata, dict):
            raise WatchlistError("--metadata must be a JSON object")
    record, outcome = _service(args).update(args.identity_id, args.name, metadata)
    if args.json:
        emit(record)
    else:
        print(f"{record['identity']} is now {printable(record['name'])}")
    return outcome.status


def run_remove(args: argparse.Namespace) -> int:
    identity_id, removed, outcome = _service(args).remove(args.identity_id)
    if args.json:
        emit({"removed": identity_id, "templates": removed, "erasure": outcome.erasure})
    elif outcome.status == 0:
        print(f"removed {identity_id} and its {removed} template(s); erasure verified on disk")
    else:
        print(f"removed {identity_id} and its {removed} template(s); ERASURE PENDING (see the warning)")
    return outcome.status


def run_export(args: argparse.Namespace) -> int:
    counts = _service(args).export(args.file)
    if args.json:
        emit({"file": args.file, **counts})
    else:
        print(f"exported {counts['identities']} identities, {counts['templates']} templates to {args.file}")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    counts, outcome = _service(args).restore(args.file)
    if args.json:
        emit({"file": args.file, **counts})
    else:
        print(f"restored {counts['identities']} identities, {counts['templates']} templates from {args.file}")
    return outcome.status


def run_stats(args: argparse.Namespace) -> int:
    service = _service(args)
    stats, problems = service.stats()
    topic = service.topic
    record = {"store": str(service.settings.watchlist.store), **stats, "healthy": not problems, "problems": problems}
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
    service = _service(args)
    pending, outcome = service.purge()
    if args.json:
        emit({"store": str(service.settings.watchlist.store), "erasure": outcome.erasure})
    elif not pending:
        print("no erasure was pending")
    elif outcome.status == 0:
        print("pending erasure completed: removed data checkpointed out of the WAL and not found in the files")
    return outcome.status


def run_rekey(args: argparse.Namespace) -> int:
    from worker.watchlist.sealing import read_key_file

    new_key = None if args.decrypt else read_key_file(args.new_key_file)
    service = _service(args)
    result, outcome = service.rekey(new_key)
    if args.json:
        emit({"store": str(service.settings.watchlist.store), **result})
        return outcome.status
    counts = f"{result['identities']} identities, {result['templates']} templates"
    if result["key_id"]:
        print(f"{counts} encrypted with key id {result['key_id']}; configure that key before the next command")
    else:
        print(f"{counts} decrypted; remove the encryption key from the configuration")
    if outcome.status == 0:
        print("old values checkpointed out of the WAL and not found in the files")
    return outcome.status


def run_identify(args: argparse.Namespace) -> int:
    from worker.cli.faces import ImageRun

    service = _service(args)
    images = faces_found = 0
    with service.open_store(must_exist=True) as store:
        recognizer, identifier = service.identifier(store)
        run = ImageRun(args, "identify")
        try:
            for batch in run.batches(service.settings.images.max_pixels):
                images += len(batch)
                faces = recognizer.analyze([image for _, image in batch])
                found = [(path, box) for (path, _), f in zip(batch, faces, strict=True) for box in f.boxes]
                faces_found += len(found)
                if not found:
                    for path, _ in batch:
                        run.done(path, 0)
                    continue
                embeddings = np.concatenate([f.embeddings for f in faces])
                results = identifier.identify(embeddings)
                for (path, box), result in zip(found, results, strict=True):
                    record = face_record(path, box.as_list(), result)
                    emit(record)
                for (path, _), f in zip(batch, faces, strict=True):
                    run.done(path, len(f.boxes))
        finally:
            service.audit_identify(None, images, faces_found)
    # Each unreadable image was already reported on stderr, one line each.
    return run.finish()


def run_replicate(args: argparse.Namespace) -> int:
    service = _service(args)
    count = service.replicate()
    if args.json:
        emit({"topic": service.topic, "identities": count})
    else:
        print(f"published {count} identities to {service.topic}")
    return 0
