"""One watchlist for every replica: two worker processes follow the compacted topic (real broker)."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition

from tests.infra._process import free_port, wait_until
from tests.infra.media import color_bars, write_h264_mp4
from tests.infra.worker_process import WorkerProcess
from worker.config import KafkaConfig
from worker.errors import WatchlistError
from worker.samples import sample_paths
from worker.watchlist.replication import (
    COMPACTED_TOPIC_CONFIG,
    WatchlistFollower,
    WatchlistPublisher,
    apply_record,
    encode_identity,
    ensure_topic,
)
from worker.watchlist.store import WatchlistStore

REPLICATION_BOUND_S = 15.0  # what docs/operations.md promises (reload_interval_s 1 s + poll 0.5 s, with margin)


def _unit(rows: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, 128)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_record_round_trip_and_tombstone(tmp_path: Path):
    with WatchlistStore(tmp_path / "a.db") as source, WatchlistStore(tmp_path / "b.db") as replica:
        ada, _ = source.add_identity_with_templates("Ada", _unit(2, 1), metadata={"team": "x"})
        value = encode_identity(source, ada.id)
        assert value is not None and apply_record(replica, ada.id, value) == "added"
        assert apply_record(replica, ada.id, value) == "unchanged"  # replays are harmless
        copied = replica.get_identity(ada.id)
        assert (copied.name, copied.metadata, copied.templates) == ("Ada", {"team": "x"}, 2)
        assert np.array_equal(
            np.stack([t.embedding for t in replica.templates(ada.id)]),
            np.stack([t.embedding for t in source.templates(ada.id)]),
        )
        source.add_templates(ada.id, _unit(1, 2))
        assert apply_record(replica, ada.id, encode_identity(source, ada.id)) == "replaced"
        assert replica.get_identity(ada.id).templates == 3
        source.remove_identity(ada.id)
        assert encode_identity(source, ada.id) is None
        assert apply_record(replica, ada.id, None) == "removed"
        assert replica.find_identity(ada.id) is None and replica.stats()["templates"] == 0
        assert apply_record(replica, ada.id, None) == "unchanged"


EMPTY_EMBEDDING = base64.b64encode(bytes(512)).decode()


def _record(**fields) -> bytes:
    record = {
        "format": "facewatch-identity",
        "version": 1,
        "id": "some-id",
        "name": "X",
        "metadata": {},
        "templates": [],
    }
    record.update(fields)
    return json.dumps({k: v for k, v in record.items() if v is not None}).encode()


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[1, 2]",
        b'{"format": "other"}',
        b'{"format": "facewatch-identity"}',
        b'{"format": "facewatch-identity", "version": 1, "id": "some-id", "templates": [{"embedding": "%%"}]}',
        # Found by fuzzing (tests/watchlist/test_replication_fuzz.py): each of these raised something
        # other than WatchlistError, which ended the follower thread, so the replica stopped following.
        b"[" * 100_000,  # RecursionError
        _record(name=5),  # AttributeError
        _record(id=None),  # KeyError
        _record(templates=[{"embedding": EMPTY_EMBEDDING, "quality": "high", "model_version": "m"}]),  # ValueError
        _record(templates=[{"embedding": EMPTY_EMBEDDING[:8], "model_version": "m"}]),  # 1 float, not 128
        _record(templates=[{"embedding": EMPTY_EMBEDDING}]),  # no model version: KeyError
        _record(metadata={"x": float("nan")}),  # NaN is not JSON
    ],
)
def test_malformed_records_are_refused(tmp_path: Path, value: bytes):
    with WatchlistStore(tmp_path / "r.db") as replica, pytest.raises(WatchlistError, match="malformed"):
        apply_record(replica, "some-id", value)


def test_two_replicas_follow_cli_enrollment_and_erasure_within_bound(kafka_broker, tmp_path: Path):
    run = uuid.uuid4().hex[:8]
    topic = f"watchlist-{run}"
    video = tmp_path / "bars.mp4"
    write_h264_mp4(video, color_bars(50), fps=10)
    kafka = {"bootstrap_servers": kafka_broker.bootstrap}
    replicas = []
    for name in ("replica-a", "replica-b"):
        folder = tmp_path / name
        folder.mkdir()
        config = {
            "cameras": [{"id": f"cam-{name}", "url": str(video), "loop": True, "realtime": True}],
            "watchlist": {"store": str(folder / "local.db"), "replication_topic": topic, "reload_interval_s": 0.5},
            "kafka": kafka,
            "events": {"stdout": True},
        }
        replicas.append(WorkerProcess(folder, config, name=name))
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready()
            assert replica.metric("facewatch_watchlist_identities") == 0

        # The admin's commands, as an operator runs them: each change is published to the topic.
        admin_config = tmp_path / "admin.yaml"
        admin_watchlist = {"store": str(tmp_path / "admin.db"), "replication_topic": topic}
        admin_config.write_text(yaml.safe_dump({"watchlist": admin_watchlist, "kafka": kafka}))

        def admin(*argv: str) -> list[dict]:
            done = subprocess.run(
                [sys.executable, "-m", "worker", "--config", str(admin_config), "watchlist", "--json", *argv],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert f"to {topic}" in done.stderr
            return [json.loads(line) for line in done.stdout.splitlines()]

        hopper = admin("add", "Grace Hopper", str(sample_paths()["Grace Hopper"]))[0]["identity"]
        collins = admin("add", "--largest", "Eileen Collins", str(sample_paths()["Eileen Collins"]))[0]["identity"]
        published_at = time.monotonic()  # the command has returned: Kafka acknowledged the change
        for replica in replicas:
            wait_until(
                lambda r=replica: r.metric("facewatch_watchlist_identities") == 2,
                REPLICATION_BOUND_S, f"{replica.name} sees the enrollment", 0.2, alive=replica._alive,
            )  # fmt: skip
        enrolled_after = time.monotonic() - published_at

        admin("remove", collins)
        removed_at = time.monotonic()
        for replica in replicas:
            wait_until(
                lambda r=replica: r.metric("facewatch_watchlist_identities") == 1
                and r.metric("facewatch_watchlist_templates") == 1,
                REPLICATION_BOUND_S, f"{replica.name} erases", 0.2, alive=replica._alive,
            )  # fmt: skip
        erased_after = time.monotonic() - removed_at

        # A full resync republishes what the admin's store holds: only Hopper is left.
        resync = subprocess.run(
            [sys.executable, "-m", "worker", "--config", str(admin_config), "watchlist", "--json", "replicate"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert resync.returncode == 0, resync.stderr
        assert json.loads(resync.stdout) == {"topic": topic, "identities": 1}
        for replica in replicas:
            assert replica.terminate() == 0, replica.log_tail()
            with WatchlistStore(replica.folder / "local.db") as local:
                assert local.find_identity(collins) is None and local.find_identity(hopper) is not None
        print(f"replication: enrollment seen by both after {enrolled_after:.1f} s, erasure after {erased_after:.1f} s")
    finally:
        for replica in replicas:
            replica.close()


def test_a_replica_started_later_reads_the_whole_watchlist(kafka_broker, tmp_path: Path):
    run = uuid.uuid4().hex[:8]
    topic = f"watchlist-{run}"
    kafka = {"bootstrap_servers": kafka_broker.bootstrap}
    publisher = WatchlistPublisher(KafkaConfig(**kafka), topic)
    with WatchlistStore(tmp_path / "admin.db") as admin:
        kept, _ = admin.add_identity_with_templates("Kept", _unit(1, 3))
        gone, _ = admin.add_identity_with_templates("Gone", _unit(1, 4))
        publisher.publish_since(admin, 0)
        version = admin.version
        admin.remove_identity(gone.id)
        publisher.publish_since(admin, version)
    publisher.close()

    video = tmp_path / "bars.mp4"
    write_h264_mp4(video, color_bars(20), fps=10)
    config = {
        "cameras": [{"id": "late", "url": str(video), "loop": True}],
        "watchlist": {"store": str(tmp_path / "late.db"), "replication_topic": topic},
        "kafka": kafka,
    }
    late = WorkerProcess(tmp_path, config, name="late").start()
    try:
        late.wait_ready()  # ready only once the topic has been read
        wait_until(lambda: late.metric("facewatch_watchlist_identities") == 1, REPLICATION_BOUND_S, "snapshot", 0.2)
        assert late.terminate() == 0
        with WatchlistStore(tmp_path / "late.db") as local:
            assert local.find_identity(kept.id) is not None and local.find_identity(gone.id) is None
    finally:
        late.close()


def test_follower_skips_a_hostile_record_counts_it_and_follows_on(kafka_broker, tmp_path: Path):
    # Issue 16 (fuzzing): a record nested deeper than Python's recursion limit raised RecursionError in the
    # follower thread, which ended it: every later record, removals included, was never applied.
    from kafka import KafkaProducer

    from worker.watchlist.replication import WatchlistFollower, encode_record
    from worker.watchlist.store import Identity, Template

    topic = f"watchlist-hostile-{uuid.uuid4().hex[:8]}"
    rejected = []
    follower = WatchlistFollower(
        KafkaConfig(bootstrap_servers=kafka_broker.bootstrap),
        topic,
        tmp_path / "replica.db",
        poll_ms=100,
        on_rejected=lambda: rejected.append(1),
    ).start()
    try:
        wait_until(follower.caught_up.is_set, 60, "follower caught up with the empty topic", 0.2)
        ada = Identity("ada-id", "Ada", {}, 0.0, 1)
        good = encode_record(ada, [Template(1, "ada-id", _unit(1, 3)[0], None, None, "m", 0.0)])
        producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        for key, value in [(b"bad-id", b"[" * 100_000), (b"ada-id", good)]:
            producer.send(topic, key=key, value=value)
        producer.flush()
        producer.close()
        wait_until(lambda: follower.applied >= 1, 60, "the record after the hostile one applied", 0.2)
        assert follower.errors == 1 and rejected == [1] and "malformed watchlist record" in follower.last_error
        with WatchlistStore(tmp_path / "replica.db") as replica:
            assert replica.get_identity("ada-id").name == "Ada" and replica.find_identity("bad-id") is None
    finally:
        follower.stop()


def _topic_state(bootstrap: str, topic: str) -> dict[str, bytes | None]:
    """The latest value of every key on ``topic`` (None: a tombstone), read from the beginning."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        state: dict[str, bytes | None] = {}
        while True:
            batches = consumer.poll(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    state[record.key.decode()] = record.value
            # Tansu's end offsets may fall short of the last batch: stop at a quiet poll past them.
            if not batches and all(consumer.position(tp) >= end[tp] for tp in partitions):
                return state
    finally:
        consumer.close()


def test_a_replica_removes_identities_the_topic_does_not_hold_before_it_is_caught_up(kafka_broker, tmp_path: Path):
    topic = f"watchlist-{uuid.uuid4().hex[:8]}"
    kafka = KafkaConfig(bootstrap_servers=kafka_broker.bootstrap)
    publisher = WatchlistPublisher(kafka, topic)
    with WatchlistStore(tmp_path / "admin.db") as admin:
        kept, _ = admin.add_identity_with_templates("Kept", _unit(1, 5))
        removed, _ = admin.add_identity_with_templates("Removed Later", _unit(1, 6))
        publisher.publish_since(admin, 0)
        version = admin.version
        admin.remove_identity(removed.id)
        publisher.publish_since(admin, version)
    publisher.close()
    replica_path = tmp_path / "replica.db"
    stray_vectors = _unit(2, 7)
    with WatchlistStore(replica_path) as replica:
        # A replica that was away: it holds the removed person, and one whose tombstone compaction dropped.
        replica.add_identity_with_templates("Removed Later", _unit(1, 6), identity_id=removed.id)
        replica.add_identity_with_templates("Stray Person", stray_vectors)
        replica.checkpoint()
    follower = WatchlistFollower(kafka, topic, replica_path, poll_ms=200).start()
    try:
        assert follower.caught_up.wait(REPLICATION_BOUND_S), follower.last_error
    finally:
        follower.stop()
    with WatchlistStore(replica_path) as replica:
        assert [i.id for i in replica.list_identities()] == [kept.id]
        assert replica.erasure_pending is None
    assert follower.pruned == 1 and follower.errors == 0
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("replica.db*"))
    assert b"Stray Person" not in on_disk and stray_vectors[0].astype("<f4").tobytes() not in on_disk


def test_topics_facewatch_creates_bound_how_long_a_removed_record_stays(kafka_broker):
    topic = f"watchlist-{uuid.uuid4().hex[:8]}"
    config = COMPACTED_TOPIC_CONFIG
    assert config["cleanup.policy"] == "compact"
    # Kafka's defaults (max.compaction.lag.ms unbounded, dirty ratio 0.5, segment.ms 7 days) can keep a
    # removed person's last record on a small topic for ever; these are finite and at most a day.
    for key in ("segment.ms", "max.compaction.lag.ms", "delete.retention.ms"):
        assert 0 < int(config[key]) <= 24 * 3_600_000, key
    assert float(config["min.cleanable.dirty.ratio"]) < 0.5 and config["min.compaction.lag.ms"] == "0"
    ensure_topic(KafkaConfig(bootstrap_servers=kafka_broker.bootstrap), topic)  # the broker accepts them
    ensure_topic(KafkaConfig(bootstrap_servers=kafka_broker.bootstrap), topic)  # and a second call is harmless
    assert topic in KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap).topics()


def _lfw_people(shared_dir: Path, count: int, root: Path) -> Path:
    """``count`` LFW people, one photo each, as an import tree (one folder per person)."""
    images = shared_dir / "data" / "lfw" / "images"
    tree = root / "people"
    for person in sorted(p for p in images.iterdir() if p.is_dir())[:count]:
        (tree / person.name).mkdir(parents=True)
        first = sorted(person.glob("*.jpg"))[0]
        (tree / person.name / first.name).symlink_to(first)
    return tree


def test_sigkill_during_import_loses_no_publication(kafka_broker, shared_dir, tmp_path: Path):
    topic = f"watchlist-{uuid.uuid4().hex[:8]}"
    tree = _lfw_people(shared_dir, 80, tmp_path)
    store = tmp_path / "admin.db"
    config = tmp_path / "admin.yaml"
    watchlist = {"store": str(store), "replication_topic": topic}
    config.write_text(yaml.safe_dump({"watchlist": watchlist, "kafka": {"bootstrap_servers": kafka_broker.bootstrap}}))
    command = [sys.executable, "-m", "worker", "--config", str(config), "watchlist", "--json"]
    importer = subprocess.Popen([*command, "import", str(tree)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def enrolled() -> int:
        if not store.is_file():
            return 0
        with WatchlistStore(store) as opened:
            return opened.stats()["identities"]

    try:
        wait_until(lambda: enrolled() >= 5, 300, "the import enrolls people", 0.1)
        importer.send_signal(signal.SIGKILL)
    finally:
        importer.kill()
        importer.communicate()
    assert importer.returncode == -signal.SIGKILL
    with WatchlistStore(store) as opened:
        local = {i.id for i in opened.list_identities()}
    assert 5 <= len(local) < 80
    ensure_topic(KafkaConfig(bootstrap_servers=kafka_broker.bootstrap), topic)
    assert set(_topic_state(kafka_broker.bootstrap, topic)) < local  # killed before it published them all

    status = subprocess.run([*command, "stats"], capture_output=True, text=True, timeout=300)
    assert json.loads(status.stdout).get("unpublished") == len(local)  # visible: the outbox is not empty

    # The next writing command publishes what the killed one left, then its own change.
    gone = sorted(local)[0]
    done = subprocess.run([*command, "remove", gone], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "an earlier command left unpublished" in done.stderr
    on_topic = _topic_state(kafka_broker.bootstrap, topic)
    assert on_topic.pop(gone) is None  # the tombstone
    assert set(on_topic) == local - {gone} and all(value is not None for value in on_topic.values())
    with WatchlistStore(store) as opened:
        for identity_id, value in on_topic.items():
            assert value == encode_identity(opened, identity_id)
    status = subprocess.run([*command, "stats"], capture_output=True, text=True, timeout=300)
    assert json.loads(status.stdout)["unpublished"] == 0


def test_a_removal_while_kafka_is_unreachable_is_published_by_the_next_command(kafka_broker, tmp_path: Path):
    topic = f"watchlist-{uuid.uuid4().hex[:8]}"
    store = tmp_path / "admin.db"
    with WatchlistStore(store) as admin:
        ada, _ = admin.add_identity_with_templates("Ada", _unit(1, 8))
        bob, _ = admin.add_identity_with_templates("Bob", _unit(1, 9))

    def watchlist(bootstrap: str, *argv: str) -> subprocess.CompletedProcess:
        config = tmp_path / "admin.yaml"
        settings = {"store": str(store), "replication_topic": topic}
        config.write_text(yaml.safe_dump({"watchlist": settings, "kafka": {"bootstrap_servers": bootstrap}}))
        command = [sys.executable, "-m", "worker", "--config", str(config), "watchlist", "--json", *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    assert watchlist(kafka_broker.bootstrap, "replicate").returncode == 0
    assert set(_topic_state(kafka_broker.bootstrap, topic)) == {ada.id, bob.id}

    nobody = f"127.0.0.1:{free_port()}"  # no broker listens here
    failed = watchlist(nobody, "remove", ada.id)
    # The person is erased locally all the same; the command says the publication is still owed.
    assert failed.returncode == 1 and "published by the next watchlist command" in failed.stderr
    with WatchlistStore(store) as admin:
        assert admin.find_identity(ada.id) is None and admin.erasure_pending is None

    done = watchlist(kafka_broker.bootstrap, "remove", bob.id)
    assert done.returncode == 0, done.stderr
    assert _topic_state(kafka_broker.bootstrap, topic) == {ada.id: None, bob.id: None}  # both tombstones
