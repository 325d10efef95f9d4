"""One watchlist for every worker replica: a compacted Kafka topic of identities.

Each record is keyed by identity id. Its value is the identity's whole current state (name,
metadata, templates with their embeddings), or nothing at all (a tombstone) once the identity is
removed. With ``cleanup.policy=compact`` the topic keeps only the newest record per identity, so
it is at once the change feed and a snapshot that a new replica reads from the beginning.

- The writer is whoever changes the watchlist: ``facewatch watchlist ...`` commands, when
  ``watchlist.replication_topic`` is set, publish a record for every identity changed since the
  store's "published up to" cursor (:meth:`WatchlistPublisher.publish_pending`). The store's
  change log is the outbox: a command killed after committing locally leaves the cursor behind,
  and the next writing command publishes what it missed.
- Every worker replica runs a :class:`WatchlistFollower`: it reads the topic from the beginning
  into its own local store and keeps applying new records; the worker's reload loop then updates
  the index and erases removed people from its caches, as it does for any store change.
- The topic is the source of truth for replicas: once the follower has read the topic to its end,
  it removes from its store every identity the topic does not hold (one removed while the replica
  was away, whose tombstone compaction has since dropped), and only then reports caught up.

Erasure: a removal publishes a tombstone; every replica deletes the identity from its store and
index on receipt. Kafka removes the older records of that key when the topic is compacted;
``COMPACTED_TOPIC_CONFIG`` bounds how long that takes on topics facewatch creates
(docs/operations.md).
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from worker.config import KafkaConfig
from worker.errors import WatchlistError
from worker.kafka_clients import common_settings, connect_with_backoff, producer_settings
from worker.models.face_spec import EMBEDDING_SIZE
from worker.text import is_utf8_text
from worker.watchlist.store import MAX_ID_LENGTH, Identity, Template, WatchlistStore

log = logging.getLogger(__name__)
RECORD_FORMAT = "facewatch-identity"
RECORD_VERSION = 1
HOUR_MS = 3_600_000
# A removed identity's last record holds its name and embeddings until the log cleaner drops it.
# Kafka's defaults leave that unbounded for a small topic (the cleaner waits for half the log to be
# dirty, and segments roll only after 7 days), so topics facewatch creates bound it: the active
# segment rolls and is compacted at most an hour after its oldest record (on the next write; see
# docs/operations.md), and a tombstone (an identity id, no biometric data) stays a day for
# replicas that were disconnected to see it.
COMPACTED_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": str(HOUR_MS),
    "max.compaction.lag.ms": str(HOUR_MS),
    "min.compaction.lag.ms": "0",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": str(24 * HOUR_MS),
}


def encode_identity(store: WatchlistStore, identity_id: str) -> bytes | None:
    """The record value for an identity's current state; None (a tombstone) when it no longer exists."""
    identity = store.find_identity(identity_id)
    if identity is None:
        return None
    return encode_record(identity, store.templates(identity_id))


def encode_record(identity: Identity, templates: Sequence[Template]) -> bytes:
    """The record value of an identity with these templates."""
    record = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "id": identity.id,
        "name": identity.name,
        "metadata": identity.metadata,
        "templates": [
            {
                "embedding": base64.b64encode(np.asarray(t.embedding, "<f4").tobytes()).decode("ascii"),
                "source": t.source,
                "quality": t.quality,
                "model_version": t.model_version,
            }
            for t in templates
        ],
    }
    return json.dumps(record, separators=(",", ":")).encode()


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _text(value: Any, field: str, limit: int | None = None, empty: bool = False) -> str:
    _check(isinstance(value, str) and (empty or bool(value.strip())), f"{field} must be a non-empty string")
    _check(limit is None or len(value) <= limit, f"{field} is longer than {limit} characters")
    _check(is_utf8_text(value), f"{field} holds a lone surrogate (not Unicode text)")
    return value


def _template(value: Any, index: int) -> np.ndarray:
    where = f"templates[{index}]"
    _check(isinstance(value, dict), f"{where} must be an object")
    _check(isinstance(value.get("embedding"), str), f"{where}.embedding must be a base64 string")
    row = np.frombuffer(base64.b64decode(value["embedding"], validate=True), "<f4")
    _check(row.shape == (EMBEDDING_SIZE,), f"{where}.embedding holds {row.size} floats, not {EMBEDDING_SIZE}")
    _check(bool(np.isfinite(row).all()), f"{where}.embedding holds NaN or infinite values")
    if value.get("source") is not None:
        _text(value["source"], f"{where}.source", empty=True)
    quality = value.get("quality")
    numeric = isinstance(quality, int | float) and not isinstance(quality, bool) and math.isfinite(quality)
    _check(quality is None or numeric, f"{where}.quality must be a finite number")
    _text(value.get("model_version"), f"{where}.model_version")
    return row


def decode_identity(value: bytes) -> dict[str, Any]:
    """A record value -> its fields, embeddings as an (N, 128) float32 matrix; WatchlistError if malformed.

    Every field is checked here, so a record that decodes is one the store accepts (apply_record
    raises nothing but WatchlistError). Records come from a topic anyone with write access can fill.
    """
    try:
        record = json.loads(value, parse_constant=_refuse_constant)
        _check(isinstance(record, dict), "not a JSON object")
        _check(
            record.get("format") == RECORD_FORMAT and record.get("version") == RECORD_VERSION,
            f"not a {RECORD_FORMAT} v{RECORD_VERSION} record",
        )
        _text(record.get("id"), "id", MAX_ID_LENGTH)
        _text(record.get("name"), "name")
        _check(isinstance(record.get("metadata"), dict), "metadata must be an object")
        templates = record.get("templates")
        _check(isinstance(templates, list), "templates must be a list")
        rows = [_template(t, i) for i, t in enumerate(templates)]
        _check(len({t["model_version"] for t in templates}) <= 1, "templates of different model versions")
        embeddings = np.stack(rows).astype(np.float32) if rows else np.zeros((0, EMBEDDING_SIZE), np.float32)
        record["embeddings"] = embeddings
        return record
    except (ValueError, RecursionError) as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise WatchlistError(f"malformed watchlist record: {exc}") from None


def apply_record(store: WatchlistStore, identity_id: str, value: bytes | None) -> str:
    """Make the local store hold what the record says; returns what was done (added/replaced/removed/unchanged)."""
    existing = store.find_identity(identity_id)
    if value is None:
        if existing is None:
            return "unchanged"
        store.remove_identity(identity_id)
        return "removed"
    record = decode_identity(value)
    if record["id"] != identity_id:
        raise WatchlistError(f"watchlist record keyed {identity_id!r} describes {record['id']!r}")
    if existing is not None:
        current = np.stack([t.embedding for t in store.templates(identity_id)]) if existing.templates else None
        same_templates = (current is None and len(record["embeddings"]) == 0) or (
            current is not None and current.shape == record["embeddings"].shape
            and np.array_equal(current, record["embeddings"])
        )  # fmt: skip
        if same_templates and existing.name == record["name"] and existing.metadata == record["metadata"]:
            return "unchanged"
    templates = record["templates"]
    store.replace_identity(
        identity_id,
        record["name"],
        record["embeddings"] if templates else None,
        metadata=record["metadata"],
        sources=[t.get("source") for t in templates] or None,
        qualities=[t.get("quality") for t in templates] or None,
        **({"model_version": templates[0]["model_version"]} if templates else {}),
    )
    return "replaced" if existing is not None else "added"


def ensure_topic(kafka: KafkaConfig, topic: str, partitions: int = 1) -> None:
    """Create the compacted topic if it does not exist (production clusters may pre-create it)."""
    admin = KafkaAdminClient(**common_settings(kafka), request_timeout_ms=10_000)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=dict(COMPACTED_TOPIC_CONFIG))])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


class WatchlistPublisher:
    """Publishes the state of changed identities to the replication topic."""

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        self.kafka = kafka
        self.topic = topic
        try:
            ensure_topic(kafka, topic)
            self.producer = KafkaProducer(**producer_settings(kafka))
        except KafkaError as exc:
            raise WatchlistError(
                f"cannot reach Kafka at {kafka.bootstrap_servers} to replicate the watchlist: {exc}"
            ) from None

    def publish(self, store: WatchlistStore, identity_ids: Iterable[str]) -> int:
        """Send each identity's current state (or tombstone) and wait for delivery; returns the count."""
        futures = []
        for identity_id in dict.fromkeys(identity_ids):
            value = encode_identity(store, identity_id)
            futures.append(self.producer.send(self.topic, key=identity_id.encode(), value=value))
        self.producer.flush()
        for future in futures:
            try:
                future.get(timeout=30)
            except KafkaError as exc:
                raise WatchlistError(f"watchlist change not delivered to {self.topic}: {exc}") from None
        return len(futures)

    def publish_since(self, store: WatchlistStore, version: int) -> int:
        """Publish every identity touched by store changes after ``version``."""
        return self.publish(store, [c.identity_id for c in store.changes_since(version) if c.identity_id])

    def publish_pending(self, store: WatchlistStore) -> int:
        """Publish every identity changed since the store's cursor for this topic, then move the cursor.

        Killed before the cursor moves, the next call publishes the same identities again: replicas
        apply a record that changes nothing as a no-op.
        """
        with _publishing(store):
            published = store.published_version(self.topic)
            version = store.version
            changed = [c.identity_id for c in store.changes_since(published) if c.identity_id and c.version <= version]
            count = self.publish(store, changed)
            store.mark_published(self.topic, version)
        return count

    def publish_all(self, store: WatchlistStore) -> int:
        """Publish every identity (a full resync of the topic from this store), and tombstones for pending removals."""
        with _publishing(store):
            version = store.version
            published = store.published_version(self.topic)
            removed = [c.identity_id for c in store.changes_since(published) if c.identity_id and c.version <= version]
            count = self.publish(store, [*removed, *(identity.id for identity in store.list_identities())])
            store.mark_published(self.topic, version)
        return count

    def close(self) -> None:
        self.producer.close()


def unpublished(store: WatchlistStore, topic: str) -> int:
    """How many identities have changes not yet published to ``topic``."""
    changes = store.changes_since(store.published_version(topic))
    return len({c.identity_id for c in changes if c.identity_id})


@contextmanager
def _publishing(store: WatchlistStore) -> Iterator[None]:
    """One publisher of a store at a time, so an older state can never be sent after a newer one."""
    descriptor = os.open(f"{store.path}.publish-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


class WatchlistFollower:
    """A thread that keeps a local store equal to the replication topic."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        store_path: Path,
        poll_ms: int = 500,
        erasure_wait_s: float = 10.0,
        on_rejected: Callable[[], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.on_rejected = on_rejected  # called once per malformed record skipped (the worker's metric)
        self.topic = topic
        self.store_path = store_path
        self.poll_ms = poll_ms
        self.erasure_wait_s = erasure_wait_s
        self.caught_up = threading.Event()  # the topic as it was at start has been applied, strays removed
        self.applied = 0
        self.pruned = 0  # identities removed because the topic does not hold them
        self.errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchlist-follower", daemon=True)

    def start(self) -> WatchlistFollower:
        self._thread.start()
        return self

    def _consumer(self) -> KafkaConsumer | None:
        def create() -> KafkaConsumer:
            ensure_topic(self.kafka, self.topic)
            consumer = KafkaConsumer(**common_settings(self.kafka), group_id=None, enable_auto_commit=False)
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                consumer.close()
                raise KafkaError(f"topic {self.topic} has no partitions yet")
            assignment = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(assignment)
            consumer.seek_to_beginning(*assignment)
            return consumer

        def failed(message: str) -> None:
            self.last_error = message

        return connect_with_backoff(
            create, f"watchlist follower ({self.topic})", self._stop.is_set, failed, self.kafka.retry_backoff_max_s
        )

    def _run(self) -> None:
        consumer = self._consumer()
        if consumer is None:
            return
        self.last_error = None
        store = WatchlistStore(self.store_path, erasure_wait_s=self.erasure_wait_s)
        # Until caught up: each key read so far, and whether its latest record holds an identity.
        on_topic: dict[str, bool] | None = {}
        try:
            assignment = list(consumer.assignment())
            end = consumer.end_offsets(assignment)
            while not self._stop.is_set():
                batches = consumer.poll(timeout_ms=self.poll_ms)
                for records in batches.values():
                    for record in records:
                        self._apply(store, record)
                        if on_topic is not None and record.key:
                            on_topic[record.key.decode("utf-8", "replace")] = record.value is not None
                # A removal that readers kept from being verified: retry without waiting, so the
                # removed bytes this connection still holds in memory (to search for) are dropped soon.
                store.finish_erasure(wait_s=0)
                # Only the end offsets say the whole topic was read; an empty poll may just be a slow fetch.
                if on_topic is not None and all(consumer.position(tp) >= end.get(tp, 0) for tp in assignment):
                    self._prune(store, {key for key, live in on_topic.items() if live})
                    on_topic = None
                    log.info("watchlist follower: caught up with %s (%d records applied)", self.topic, self.applied)
                    self.caught_up.set()
        finally:
            consumer.close()
            store.close()

    def _prune(self, store: WatchlistStore, live: set[str]) -> None:
        """Remove the identities the topic does not hold: the topic is the replicas' source of truth."""
        strays = [identity.id for identity in store.list_identities() if identity.id not in live]
        for identity_id in strays:
            store.remove_identity(identity_id)
        self.pruned += len(strays)
        if strays:
            log.warning(
                "watchlist follower: removed %d identit%s that %s does not hold (removed while this replica was "
                "away, or the store was not filled from this topic)",
                len(strays), "y" if len(strays) == 1 else "ies", self.topic,
            )  # fmt: skip

    def _apply(self, store: WatchlistStore, record: Any) -> None:
        key = record.key.decode("utf-8", "replace") if record.key else None
        try:
            if not key:
                raise WatchlistError("watchlist record without a key")
            outcome = apply_record(store, key, record.value)
            if outcome != "unchanged":
                self.applied += 1
                log.info("watchlist follower: %s %s (offset %d)", outcome, key, record.offset)
        except WatchlistError as exc:
            # A malformed record must not stop the replica from following the rest.
            self.errors += 1
            self.last_error = str(exc)
            if self.on_rejected is not None:
                self.on_rejected()
            log.error("watchlist follower: skipped the record at offset %d: %s", record.offset, exc)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
