"""The watchlist's operations, shared by the CLI (worker/cli/watchlist_cmd.py) and the admin API.

Every change goes the same way whoever asks for it: the store is opened; whatever an earlier
change left unpublished is published to the replication topic (the store's change log is the
outbox, worker/watchlist/replication.py); the change is made in one transaction; the saved index
is refreshed; a removal's erasure is verified on disk (or reported pending); the change is
published; and one audit entry records who did what, from where, and how it ended.

Results are data (dicts of JSON values, reports); printing them is the caller's business.
``notify`` gets the progress notes the CLI prints on stderr (the API logs them).

One lock serialises the operations of a service object: the API's request threads share one
recognizer (models are not re-entrant) and one publisher order (an older state must never be
published after a newer one; ``_publishing`` also guards that across processes).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from worker.admin.audit import Actor, AuditLog, cli_actor
from worker.config import DEFAULT_MODEL, Settings
from worker.errors import FacewatchError, UnknownIdentityError, WatchlistError
from worker.text import utf8_text
from worker.watchlist.store import DEFAULT_MODEL_VERSION, Identity, WatchlistStore

if TYPE_CHECKING:
    from worker.recognition import FaceRecognizer
    from worker.watchlist.enroll import Enroller, EnrollReport

ERASURE_PENDING_EXIT = 75  # sysexits' EX_TEMPFAIL: the erasure is retried, by `purge` or the worker

# What `add NAME` does when NAME is already enrolled: refuse (the default, a typo or a second
# enrollment of one person is the usual cause), merge into that identity, or make a second one.
ExistingName = Literal["refuse", "merge", "new"]
EXISTING_NAME_CHOICES: tuple[str, ...] = ("refuse", "merge", "new")


class NameTakenError(WatchlistError):
    """``add NAME`` where NAME is already enrolled, and neither merge nor new was asked for."""


class AmbiguousNameError(WatchlistError):
    """A name given where an identity is expected, shared by several identities."""


def iso_time(seconds: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds, e.g. 2026-12-06T02:15:42.123Z (the events' form)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ReplicationPending(WatchlistError):
    """The change is in the local store but could not be published to the replication topic."""


@dataclass(frozen=True)
class Outcome:
    """How a change ended after it was committed: erasure verified or pending, identities replicated."""

    erasure_pending: str | None = None  # the reason, while removed data may still be on disk
    replicated: int = 0

    @property
    def status(self) -> int:
        """The CLI's exit status: 0, or ERASURE_PENDING_EXIT."""
        return ERASURE_PENDING_EXIT if self.erasure_pending else 0

    @property
    def erasure(self) -> str:
        """'complete' or 'pending'."""
        return "pending" if self.erasure_pending else "complete"


def identity_record(identity: Identity) -> dict[str, Any]:
    """An identity as JSON (never its embeddings); ``identity`` is its id, as in every other output."""
    return {
        "identity": identity.id,
        "name": identity.name,
        "templates": identity.templates,
        "metadata": identity.metadata,
        "created": iso_time(identity.created),
    }


def resolve_identity(store: WatchlistStore, ref: str) -> Identity:
    """The identity whose id is ``ref``, else the one identity named ``ref``.

    UnknownIdentityError when neither exists; AmbiguousNameError (listing the ids) when several
    identities have that name. An id always wins: ids are unique, names need not be.
    """
    found = store.find_identity(utf8_text(ref))
    if found is not None:
        return found
    named = store.identities_named(utf8_text(ref))
    if len(named) == 1:
        return named[0]
    if not named:
        raise UnknownIdentityError(f"no identity with id or name {ref!r} in the watchlist")
    ids = ", ".join(i.id for i in named)
    raise AmbiguousNameError(f"{len(named)} identities are named {ref!r}: give one of their ids ({ids})")


def similar_identities(
    store: WatchlistStore,
    identity_id: str,
    embeddings: np.ndarray,
    threshold: float,
    everyone: tuple[list[str], np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Other identities with a template within ``threshold`` of one of ``embeddings``, nearest first.

    A new template that close to someone else would be identified as them: the same person
    enrolled twice, or a photo of the wrong person. ``everyone``: (owners, embeddings) of every
    template, read once by a caller checking many identities (import).
    """
    if not len(embeddings):
        return []
    owners, templates = everyone if everyone is not None else store.all_templates()[1:]
    others = np.array([owner != identity_id for owner in owners], dtype=bool)
    if not others.any():
        return []
    # float64: the expanded form below cancels; float32 would put a same-photo twin at ~3e-4, not 0.
    theirs, embeddings = templates[others].astype(np.float64), embeddings.astype(np.float64)
    their_owners = [o for o, other in zip(owners, others, strict=True) if other]
    # |a - b|² = |a|² + |b|² - 2a·b: an (N, k) matrix, not the (N, k, 128) of differences.
    squared = (theirs**2).sum(axis=1)[:, None] + (embeddings**2).sum(axis=1)[None, :] - 2 * theirs @ embeddings.T
    distances = np.sqrt(np.maximum(squared, 0)).min(axis=1)
    nearest: dict[str, float] = {}
    for owner, distance in zip(their_owners, distances.tolist(), strict=True):
        if distance <= threshold and distance < nearest.get(owner, math.inf):
            nearest[owner] = distance
    names = store.names(nearest)
    return [
        {"identity": owner, "name": names.get(owner), "distance": round(distance, 4)}
        for owner, distance in sorted(nearest.items(), key=lambda item: item[1])
    ]


def nothing_enrolled(report: EnrollReport) -> WatchlistError:
    """The error of an enrollment that enrolled nothing: the one reason, or a pointer to the report."""
    if len(report.rejected) == 1:
        (only,) = report.rejected
        detail = only.reason if only.path in only.reason else f"{only.path}: {only.reason}"
        return WatchlistError(f"nothing enrolled for {report.name}: {detail}")
    return WatchlistError(f"nothing enrolled for {report.name}: every photo and video was rejected (reasons above)")


def face_record(image: str, box: list[int], result: Any) -> dict[str, Any]:
    """One identified face as JSON: image, box, status, identity, name, score, distance, confidence, threshold.

    confidence: calibrated from false-match rates measured at that distance (worker/calibration.py), null for a
    trained embedder.model (no table);
    threshold: the match distance the status was decided against.
    """
    return {
        "image": image,
        "box": box,
        "status": result.status,
        "identity": result.identity_id,
        "name": result.name,
        "score": round(result.score, 4),
        "distance": round(result.distance, 4) if math.isfinite(result.distance) else None,
        "confidence": round(result.confidence, 4) if result.confidence is not None else None,
        "threshold": round(result.threshold, 4),
    }


class WatchlistService:
    """The watchlist operations for one configuration, audited under the actor each call names."""

    def __init__(
        self,
        settings: Settings,
        audit: AuditLog | None = None,
        notify: Callable[[str], None] = lambda _: None,
        progress: bool = False,
    ) -> None:
        self.settings = settings
        self.audit = audit if audit is not None else AuditLog.from_settings(settings)
        self.notify = notify
        self.progress = progress
        self._lock = threading.RLock()
        self._recognizer: FaceRecognizer | None = None

    # -- plumbing ----------------------------------------------------------------------------------

    @property
    def topic(self) -> str | None:
        return self.settings.watchlist.replication_topic

    def open_store(self, must_exist: bool) -> WatchlistStore:
        """The store, read-only use; WatchlistError when ``must_exist`` and it does not."""
        path = Path(self.settings.watchlist.store)
        if must_exist and not path.is_file():
            raise WatchlistError(
                f"watchlist store {path} does not exist (enroll someone first: facewatch watchlist add)"
            )
        return WatchlistStore.from_config(self.settings.watchlist)

    def index_path(self, store: WatchlistStore) -> Path | None:
        """Where the FAISS index is saved (None: not saved, the store is encrypted)."""
        from worker.watchlist.index import saved_index_path

        return saved_index_path(self.settings.watchlist, store)

    def recognizer(self) -> FaceRecognizer:
        """The models, loaded once per service."""
        if self._recognizer is None:
            from worker.recognition import FaceRecognizer

            self._recognizer = FaceRecognizer(self.settings)
        return self._recognizer

    def enroller(self, store: WatchlistStore) -> Enroller:
        """An enroller on ``store`` with the configured gates (and the video reader of `watchlist add`)."""
        from worker.stream.video_faces import VideoFaceReader
        from worker.watchlist.enroll import Enroller, EnrollRules

        recognizer = self.recognizer()
        reader = VideoFaceReader(recognizer, self.settings.tracking, progress=self.progress)
        return Enroller(recognizer, store, EnrollRules.from_config(self.settings.enrollment), self.progress, reader)

    def _replicate(self, store: WatchlistStore, all_identities: bool) -> int:
        from worker.watchlist.replication import WatchlistPublisher

        publisher = WatchlistPublisher(self.settings.kafka, str(self.topic))
        try:
            return publisher.publish_all(store) if all_identities else publisher.publish_pending(store)
        finally:
            publisher.close()

    @contextmanager
    def writing(self, actor: Actor, action: str, must_exist: bool) -> Iterator[_Change]:
        """A change: the store opened (earlier unpublished changes published first), then ``finish``.

        Audits the action when the block ends, with its outcome or its error.
        """
        with self._lock:
            change = _Change(self, actor, action)
            try:
                change.store = self.open_store(must_exist)
                change.unreachable = self._publish_leftovers(change.store)
                with change.store:
                    yield change
            except FacewatchError as exc:
                if not change.recorded:
                    self.audit.record(actor, action, f"error: {exc}", change.identity, **change.details)
                raise
            self.audit.record(actor, action, change.result, change.identity, **change.details)

    def _publish_leftovers(self, store: WatchlistStore) -> str | None:
        """Publish what an earlier change left unpublished; Kafka's error when it is away (no local change waits)."""
        topic = self.topic
        if not topic or store.published_version(topic) >= store.version:
            return None
        try:
            count = self._replicate(store, all_identities=False)
        except WatchlistError as exc:
            return str(exc)
        except BaseException:
            store.close()
            raise
        self.notify(
            f"published {count} identit{'y' if count == 1 else 'ies'} an earlier command left unpublished to {topic}"
        )
        return None

    def erasure_outcome(self, store: WatchlistStore) -> str | None:
        """Retry a pending erasure; None when none is left, else why it is still pending (also notified)."""
        if store.erasure_pending is None:
            return None
        erasure = store.finish_erasure()
        if erasure.complete:
            return None
        self.notify(
            f"warning: {erasure.detail}. It is retried by the next watchlist command, by `facewatch watchlist purge` "
            "and by a worker using this store (facewatch_watchlist_erasure_pending)."
        )
        return erasure.detail

    def _refresh_saved_index(self, store: WatchlistStore) -> None:
        """Bring a saved index up to date after a change, so a removed person leaves that file too."""
        from worker.watchlist.index import WatchlistIndex

        path = self.index_path(store)
        if path is not None and path.is_file():
            model = store.model_version or DEFAULT_MODEL_VERSION
            WatchlistIndex.load_or_rebuild(store, path, self.settings.watchlist.index_kind, model, progress=False)

    def _finish(self, store: WatchlistStore, unreachable: str | None) -> Outcome:
        """After a change: update the saved index, finish erasure, replicate."""
        self._refresh_saved_index(store)
        pending = self.erasure_outcome(store)
        topic = self.topic
        count = 0
        if topic and store.published_version(topic) < store.version:
            try:
                if unreachable:
                    raise WatchlistError(unreachable)
                count = self._replicate(store, all_identities=False)
            except WatchlistError as exc:
                raise ReplicationPending(
                    f"{exc}; the change is kept in the store and published by the next watchlist command "
                    "(or facewatch watchlist replicate)"
                ) from None
            self.notify(f"replicated {count} identit{'y' if count == 1 else 'ies'} to {topic}")
        return Outcome(pending, count)

    def _read(self, actor: Actor, action: str, identity: str | None = None) -> _Reading:
        return _Reading(self, actor, action, identity)

    # -- reading -----------------------------------------------------------------------------------

    def list_identities(self, actor: Actor | None = None) -> list[dict[str, Any]]:
        """Every identity (never embeddings)."""
        with self._read(actor or cli_actor(), "list") as store:
            return [identity_record(i) for i in store.list_identities()]

    def show(self, identity_id: str, actor: Actor | None = None) -> dict[str, Any]:
        """One identity (by id, or by name when unique) and its templates' ids, sources and qualities."""
        with self._read(actor or cli_actor(), "show", identity_id) as store:
            identity = resolve_identity(store, identity_id)
            templates = store.templates(identity.id)
        record = identity_record(identity)
        record["templates"] = [
            {
                "id": t.id,
                "source": t.source,
                "quality": t.quality,
                "model_version": t.model_version,
                "created": iso_time(t.created),
            }
            for t in templates
        ]
        return record

    def stats(self) -> tuple[dict[str, Any], list[str]]:
        """Counts, version, unpublished identities; and the problems found (empty: healthy)."""
        with self._lock, self.open_store(must_exist=True) as store:
            stats: dict[str, Any] = dict(store.stats())
            stats["key_id"] = store.key_id
            problems = store.verify()
            if self.topic:
                from worker.watchlist.replication import unpublished

                stats["unpublished"] = unpublished(store, self.topic)
            if store.erasure_pending is not None:
                problems.append(
                    "erasure pending: removed data may still be in the file (run facewatch watchlist purge)"
                )
        return stats, problems

    def export(self, path: str | Path, actor: Actor | None = None) -> dict[str, int]:
        """Write the watchlist to a JSON-lines file (biometric data); returns the counts."""
        with self._read(actor or cli_actor(), "export") as store:
            counts = store.export(path)
        return counts

    # -- changing ----------------------------------------------------------------------------------

    def enroll(
        self,
        name: str,
        sources: Sequence[str | Path],
        metadata: dict[str, Any] | None = None,
        identity_id: str | None = None,
        actor: Actor | None = None,
        existing: ExistingName = "refuse",
    ) -> tuple[EnrollReport, Outcome | None]:
        """Enroll photos and videos of one person; the outcome is None when nothing was enrolled.

        Without ``identity_id``, a ``name`` already enrolled is refused (NameTakenError), merged
        into that identity (``existing="merge"``) or made a second identity (``"new"``); with a
        new ``identity_id``, it is refused unless ``"new"``. The
        report's ``similar`` lists other identities the new templates are within the match
        threshold of (also notified as a warning).
        """
        with self.writing(actor or cli_actor(), "enroll", must_exist=False) as change:
            change.identity = identity_id
            if identity_id is None and existing != "new":
                identity_id = self._existing_name(change.store, name, existing)
                change.identity = identity_id
            elif identity_id is not None and existing != "new" and change.store.find_identity(identity_id) is None:
                # A new id for a name already enrolled is a second person of that name: deliberate only with new.
                self._existing_name(change.store, name, "refuse")
            report = self.enroller(change.store).enroll(name, sources, metadata, identity_id)
            change.identity = report.identity.id if report.identity else identity_id
            change.details = {"accepted": len(report.accepted), "rejected": len(report.rejected)}
            if not report.accepted:
                change.result = "rejected"
                return report, None
            self._warn_similar(change.store, report)
            if report.similar:
                change.details["similar"] = [s["identity"] for s in report.similar]
            return report, change.finish()

    @staticmethod
    def _existing_name(store: WatchlistStore, name: str, existing: ExistingName) -> str | None:
        """The id to merge into (None: a new identity); NameTakenError when the name is taken and refused."""
        named = store.identities_named(utf8_text(name))  # as the enroller stores it
        if not named:
            return None
        ids = ", ".join(i.id for i in named)
        if existing == "merge":
            if len(named) > 1:
                raise AmbiguousNameError(f"{len(named)} identities are named {name!r} ({ids}): add to one with --id ID")
            return named[0].id
        raise NameTakenError(
            f"{name!r} is already enrolled ({ids}): --merge adds these photos to it, "
            "--new makes a second identity with the same name"
        )

    def _warn_similar(
        self, store: WatchlistStore, report: EnrollReport, everyone: tuple[list[str], np.ndarray] | None = None
    ) -> None:
        """Fill ``report.similar`` and warn: a new template within the match threshold of someone else."""
        assert report.identity is not None
        new = store.all_templates([a.template_id for a in report.accepted])[2]
        threshold = self.settings.watchlist.match_distance
        report.similar = similar_identities(store, report.identity.id, new, threshold, everyone)
        for other in report.similar:
            self.notify(
                f"warning: a new template of {report.name} ({report.identity.id}) is {other['distance']:.3f} from "
                f"{other['name']} ({other['identity']}), within the match threshold {threshold:g}: "
                "the same person enrolled twice, or a photo of the wrong person?"
            )

    def import_tree(self, folder: str | Path, actor: Actor | None = None) -> tuple[list[EnrollReport], Outcome]:
        """Enroll a folder with one sub-folder per person."""
        with self.writing(actor or cli_actor(), "import", must_exist=False) as change:
            reports = self.enroller(change.store).import_tree(folder)
            enrolled = [r for r in reports if r.accepted]
            if enrolled:
                everyone = change.store.all_templates()[1:]
                for report in enrolled:
                    self._warn_similar(change.store, report, everyone)
            change.details = {
                "identities": sum(1 for r in reports if r.accepted),
                "accepted": sum(len(r.accepted) for r in reports),
                "rejected": sum(len(r.rejected) for r in reports),
                "similar": sum(len(r.similar) for r in reports),
            }
            return reports, change.finish()

    def update(
        self,
        identity_id: str,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        actor: Actor | None = None,
    ) -> tuple[dict[str, Any], Outcome]:
        """Rename an identity (by id, or by name when unique) and/or replace its metadata."""
        if name is None and metadata is None:
            raise WatchlistError("nothing to change: give a new name or metadata")
        with self.writing(actor or cli_actor(), "update", must_exist=True) as change:
            change.identity = identity_id
            identity_id = resolve_identity(change.store, identity_id).id
            change.identity = identity_id
            change.details = {"name": name is not None, "metadata": metadata is not None}
            identity = change.store.update_identity(identity_id, name, metadata)
            return identity_record(identity), change.finish()

    def remove(self, identity_id: str, actor: Actor | None = None) -> tuple[str, int, Outcome]:
        """Delete an identity (by id, or by name when unique) and its templates for good.

        Returns its id, the count of templates removed, and the erasure's outcome.
        """
        with self.writing(actor or cli_actor(), "remove", must_exist=True) as change:
            change.identity = identity_id
            identity = resolve_identity(change.store, identity_id)
            change.identity = identity.id
            removed = change.store.remove_identity(identity.id)
            change.details = {"templates": len(removed)}
            return identity.id, len(removed), change.finish()

    def restore(self, path: str | Path, actor: Actor | None = None) -> tuple[dict[str, int], Outcome]:
        """Replace the watchlist with an export file (atomic)."""
        if not Path(path).is_file():
            raise WatchlistError(f"{path} does not exist")
        # A trained embedder.model: its export restores into any store (the explicit way to change models);
        # dlib's ResNet keeps the store's own model (or dlib's, for an empty store).
        model = None if self.settings.embedder.model == DEFAULT_MODEL else self.recognizer().embedder.model_version
        with self.writing(actor or cli_actor(), "restore", must_exist=False) as change:
            counts = change.store.restore(path, model)
            change.details = dict(counts)
            return counts, change.finish()

    def purge(self, actor: Actor | None = None) -> tuple[bool, Outcome]:
        """Finish a pending erasure; whether one was pending, and the outcome."""
        actor = actor or cli_actor()
        with self._lock, self.open_store(must_exist=True) as store:
            pending = store.erasure_pending is not None
            outcome = Outcome(self.erasure_outcome(store))
        self.audit.record(actor, "purge", f"erasure {outcome.erasure}" if pending else "nothing pending")
        return pending, outcome

    def rekey(self, new_key: bytes | None, actor: Actor | None = None) -> tuple[dict[str, Any], Outcome]:
        """Re-encrypt the store with ``new_key`` (None: decrypt it), the current key from the settings.

        One transaction; the old ciphertexts are then erased and checked for like removed data. A
        saved index (plaintext vectors) is deleted when the store becomes encrypted.
        """
        actor = actor or cli_actor()
        with self._lock:
            try:
                with self.open_store(must_exist=True) as store:
                    result = store.rekey(new_key)
                    self.index_path(store)
                    outcome = Outcome(self.erasure_outcome(store))
            except FacewatchError as exc:
                self.audit.record(actor, "rekey", f"error: {exc}")
                raise
        self.audit.record(
            actor, "rekey", "ok" if outcome.status == 0 else "ok, erasure pending", key_id=result["key_id"]
        )
        return result, outcome

    def replicate(self, actor: Actor | None = None) -> int:
        """Publish every identity to the replication topic (a full resync)."""
        if not self.topic:
            raise WatchlistError("watchlist.replication_topic is not set (FACEWATCH_WATCHLIST__REPLICATION_TOPIC)")
        with self._lock, self.open_store(must_exist=True) as store:
            count = self._replicate(store, all_identities=True)
        self.audit.record(actor or cli_actor(), "replicate", "ok", identities=count)
        return count

    # -- identify ----------------------------------------------------------------------------------

    def identify_images(
        self, images: Sequence[tuple[str, np.ndarray]], actor: Actor | None = None
    ) -> list[dict[str, Any]]:
        """Every face of ``images`` (name, RGB array) against the watchlist, one record each."""
        actor = actor or cli_actor()
        with self._lock:
            try:
                with self.open_store(must_exist=True) as store:
                    recognizer, identifier = self.identifier(store)
                    faces = recognizer.analyze([image for _, image in images])
                    found = [(name, box) for (name, _), f in zip(images, faces, strict=True) for box in f.boxes]
                    results = identifier.identify(np.concatenate([f.embeddings for f in faces])) if found else []
            except FacewatchError as exc:
                self.audit.record(actor, "identify", f"error: {exc}", images=len(images))
                raise
        self.audit_identify(actor, len(images), len(found))
        return [face_record(n, box.as_list(), r) for (n, box), r in zip(found, results, strict=True)]

    def identifier(self, store: WatchlistStore) -> tuple[FaceRecognizer, Any]:
        """The recognizer and an Identifier over the saved (or rebuilt) index of ``store``."""
        from worker.watchlist.identify import Identifier
        from worker.watchlist.index import WatchlistIndex

        config = self.settings.watchlist
        recognizer = self.recognizer()
        model = recognizer.embedder.model_version
        index = WatchlistIndex.load_or_rebuild(store, self.index_path(store), config.index_kind, model, progress=False)
        identifier = Identifier.from_config(store, index, config)
        if config.classifier == "svm":
            from worker.watchlist.svm import SvmClassifier

            # Here a list too small for an SVM is refused, not quietly decided by the other rule.
            identifier.classifier = SvmClassifier.from_config(store, config)
        return recognizer, identifier

    def audit_identify(self, actor: Actor | None, images: int, faces: int, failed: int = 0) -> None:
        """The audit entry of an identify run whose loop the caller drives (the CLI's batches)."""
        self.audit.record(actor or cli_actor(), "identify", "ok", images=images, faces=faces, failed=failed)


class _Change:
    """One change in progress: the open store, what to audit, and ``finish``."""

    def __init__(self, service: WatchlistService, actor: Actor, action: str) -> None:
        self.service = service
        self.actor = actor
        self.action = action
        self.store: WatchlistStore = None  # type: ignore[assignment]  # set by ``writing`` before use
        self.unreachable: str | None = None
        self.identity: str | None = None
        self.details: dict[str, Any] = {}
        self.result = "ok"
        self.recorded = False

    def finish(self) -> Outcome:
        """Index, erasure and replication after the change; the audit result says how it ended."""
        try:
            outcome = self.service._finish(self.store, self.unreachable)
        except ReplicationPending:
            self.service.audit.record(self.actor, self.action, "ok, replication pending", self.identity, **self.details)
            self.recorded = True
            raise
        self.details = {**self.details, "erasure": outcome.erasure} if self.action == "remove" else self.details
        if outcome.erasure_pending:
            self.result = "ok, erasure pending"
        return outcome


class _Reading:
    """A read-only operation: the store opened, and one audit entry (ok or the error)."""

    def __init__(self, service: WatchlistService, actor: Actor, action: str, identity: str | None) -> None:
        self.service, self.actor, self.action, self.identity = service, actor, action, identity
        self.store: WatchlistStore | None = None

    def __enter__(self) -> WatchlistStore:
        self.store = self.service.open_store(must_exist=True)
        return self.store

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        assert self.store is not None
        self.store.close()
        if self.action in ("list", "show"):
            return  # reads of the list are not audited: the issue asks for changes and identify calls
        if exc is None:
            self.service.audit.record(self.actor, self.action, "ok", self.identity)
        elif isinstance(exc, FacewatchError):
            self.service.audit.record(self.actor, self.action, f"error: {exc}", self.identity)
