"""One watchlist for every replica: two worker processes follow the compacted topic (real broker)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.infra._process import wait_until
from tests.infra.media import color_bars, write_h264_mp4
from tests.infra.worker_process import WorkerProcess
from worker.config import KafkaConfig
from worker.errors import WatchlistError
from worker.samples import sample_paths
from worker.watchlist.replication import WatchlistPublisher, apply_record, encode_identity
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
