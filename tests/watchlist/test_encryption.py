"""Encryption at rest of the watchlist store: checked on the bytes of the SQLite file and its WAL."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.infra._process import wait_until
from tests.infra.media import color_bars, write_h264_mp4
from tests.infra.sqlite_reader import ReaderMidRead
from tests.infra.worker_process import WorkerProcess
from worker.config import KafkaConfig
from worker.errors import WatchlistError
from worker.watchlist.index import WatchlistIndex, saved_index_path
from worker.watchlist.replication import WatchlistFollower, WatchlistPublisher
from worker.watchlist.sealing import OVERHEAD, key_id, parse_key
from worker.watchlist.store import EMBEDDING_BYTES, WatchlistStore

NAMES = ("Zelda Quartermaine", "Yusuf Oyelaran-Brandt")
METADATA = {"case": "case-file-55213"}
SOURCES = ("/photos/zelda_0001.jpg", "/photos/yusuf_0002.jpg")


def unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 128)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def on_disk(path: Path) -> bytes:
    """The store's file and its WAL, as they are now."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def plaintexts(vectors: np.ndarray) -> list[bytes]:
    """What must never be on disk when the store is encrypted."""
    embeddings = [v.astype("<f4").tobytes() for v in vectors]
    return [*embeddings, *(n.encode() for n in NAMES), b"case-file-55213", b"zelda_0001"]


def fill(store: WatchlistStore, vectors: np.ndarray) -> list[str]:
    ids = []
    for number, name in enumerate(NAMES):
        rows = vectors[2 * number : 2 * number + 2]
        identity, _ = store.add_identity_with_templates(name, rows, METADATA, sources=[SOURCES[number], None])
        ids.append(identity.id)
    return ids


def raw_values(path: Path) -> list[bytes]:
    """Every stored name, metadata, source and embedding as the file holds it (another connection)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name, metadata FROM identities").fetchall()
        rows += db.execute("SELECT embedding, source FROM templates").fetchall()
    return [v if isinstance(v, bytes) else v.encode() for row in rows for v in row if v is not None]


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


def test_an_encrypted_store_holds_no_embedding_name_metadata_or_source_in_its_file_or_wal(tmp_path, key):
    vectors = unit_vectors(4, 1)
    plain, sealed = tmp_path / "plain.db", tmp_path / "sealed.db"
    for path, store_key in ((plain, None), (sealed, key)):
        with WatchlistStore(path, key=store_key) as store:
            ids = fill(store, vectors)
            store.update_identity(ids[1], metadata={**METADATA, "seen": 2})
            during = on_disk(path)  # the changes are in the WAL now, not yet checkpointed
            assert Path(f"{path}-wal").stat().st_size > 0
            store.checkpoint()
            after = on_disk(path)
            names = [i.name for i in store.list_identities()]
            templates = store.templates(ids[0])
            _, _, matrix = store.all_templates()
        assert names == sorted(NAMES)  # sorted in Python when sealed, as SQLite sorts the plaintext
        assert templates[0].source == SOURCES[0] and templates[1].source is None
        np.testing.assert_array_equal(matrix, vectors)
        found = [needle for needle in plaintexts(vectors) if needle in during or needle in after]
        if store_key is None:
            assert found == plaintexts(vectors)  # the search can fail: unencrypted, every value is on disk
        else:
            assert found == []
    with sqlite3.connect(sealed) as db:
        sizes = {row[0] for row in db.execute("SELECT length(embedding) FROM templates")}
        (stored_id,) = db.execute("SELECT value FROM meta WHERE key = 'key_id'").fetchone()
    assert sizes == {EMBEDDING_BYTES + OVERHEAD} and stored_id == key_id(key)


def test_a_store_opens_only_with_its_key(tmp_path, key):
    path = tmp_path / "w.db"
    with WatchlistStore(path, key=key) as store:
        fill(store, unit_vectors(4, 2))
    before = on_disk(path)
    with pytest.raises(WatchlistError, match=r"is encrypted \(key id [0-9a-f]{16}\): set FACEWATCH_WATCHLIST__"):
        WatchlistStore(path)
    with pytest.raises(WatchlistError, match=r"is encrypted with key id \w+, the configured key has id"):
        WatchlistStore(path, key=os.urandom(32))
    assert on_disk(path) == before  # refused before anything was written
    with WatchlistStore(path, key=key) as store:
        assert store.stats()["identities"] == 2 and store.verify() == []

    plain = tmp_path / "plain.db"
    with WatchlistStore(plain) as store:
        store.add_identity("Someone")
    with pytest.raises(WatchlistError, match="is not encrypted: encrypt it with `facewatch watchlist rekey"):
        WatchlistStore(plain, key=key)  # never a store of plaintext and sealed rows mixed


def test_a_value_moved_to_another_row_or_changed_is_an_error_never_garbage(tmp_path, key):
    path = tmp_path / "w.db"
    with WatchlistStore(path, key=key) as store:
        zelda, yusuf = fill(store, unit_vectors(4, 3))
        first = store.templates(zelda)[0].id
    with sqlite3.connect(path) as db:
        (other,) = db.execute("SELECT embedding FROM templates WHERE identity_id = ? LIMIT 1", (yusuf,)).fetchone()
        db.execute("UPDATE templates SET embedding = ? WHERE id = ?", (other, first))  # Yusuf's face as Zelda's
        (name,) = db.execute("SELECT name FROM identities WHERE id = ?", (zelda,)).fetchone()
        flipped = name[:-1] + bytes([name[-1] ^ 1])
        db.execute("UPDATE identities SET name = ? WHERE id = ?", (flipped, yusuf))
    with WatchlistStore(path, key=key) as store:
        with pytest.raises(WatchlistError, match=f"embedding of template {first} fails authentication"):
            store.templates(zelda)
        with pytest.raises(WatchlistError, match=r"name of identity '[^']+' fails authentication"):
            store.get_identity(yusuf)
        problems = store.verify()
    assert len(problems) == 2 and all("fails authentication" in p for p in problems)


def test_removal_erases_the_ciphertexts_and_the_check_looks_for_them(tmp_path, key):
    path = tmp_path / "w.db"
    with WatchlistStore(path, key=key, erasure_wait_s=0.2) as store:
        zelda, _ = fill(store, unit_vectors(4, 4))
        store.checkpoint()
        with sqlite3.connect(path) as db:
            name = db.execute("SELECT name FROM identities WHERE id = ?", (zelda,)).fetchone()[0]
            blobs = [r[0] for r in db.execute("SELECT embedding FROM templates WHERE identity_id = ?", (zelda,))]
        with ReaderMidRead(path):
            store.remove_identity(zelda)
            # A reader keeps the checkpoint from finishing: the ciphertexts are still in the WAL, and the
            # store says the erasure is pending rather than done.
            assert any(blob in on_disk(path) for blob in blobs) and store.erasure_pending is not None
        erasure = store.finish_erasure()
        assert erasure.complete, erasure.detail
        assert store.erasure_pending is None
    data = on_disk(path)
    assert all(needle not in data for needle in [name, *blobs])


def test_rekey_reseals_in_place_and_leaves_no_old_value_in_file_or_wal(tmp_path, key):
    path = tmp_path / "w.db"
    vectors = unit_vectors(4, 5)
    with WatchlistStore(path) as store:
        fill(store, vectors)
        store.checkpoint()
        before = store.list_identities()
    assert all(needle in on_disk(path) for needle in plaintexts(vectors))
    new = os.urandom(32)
    for old_key, new_key in ((None, key), (key, new), (new, None)):
        old_values = raw_values(path)
        with WatchlistStore(path, key=old_key) as store:
            result = store.rekey(new_key)
            assert result["erasure"] == "complete" and store.erasure_pending is None
            assert result["key_id"] == (key_id(new_key) if new_key else None)
            assert Path(f"{path}-wal").stat().st_size == 0  # checkpointed (TRUNCATE)
        data = on_disk(path)
        assert [value for value in old_values if value in data] == []
        if new_key is not None:
            assert [needle for needle in plaintexts(vectors) if needle in data] == []
            if old_key is not None:
                with pytest.raises(WatchlistError, match="is encrypted with key id"):
                    WatchlistStore(path, key=old_key)
        with WatchlistStore(path, key=new_key) as store:
            assert store.list_identities() == before and store.verify() == []
            np.testing.assert_array_equal(store.all_templates()[2], vectors)


def test_rekey_is_one_transaction(tmp_path, key):
    path = tmp_path / "w.db"
    with WatchlistStore(path, key=key) as store:
        zelda, _ = fill(store, unit_vectors(4, 6))
        last = store.templates(zelda)[-1].id
    with sqlite3.connect(path) as db:
        db.execute("UPDATE templates SET embedding = zeroblob(?) WHERE id = ?", (EMBEDDING_BYTES + OVERHEAD, last))
    before = raw_values(path)
    with WatchlistStore(path, key=key) as store, pytest.raises(WatchlistError, match=f"template {last}"):
        store.rekey(os.urandom(32))
    assert raw_values(path) == before  # not one row re-sealed
    with WatchlistStore(path, key=key) as store:  # still the old key's store
        assert store.key_id == key_id(key) and store.stats()["templates"] == 4


def test_export_is_plaintext_and_restores_into_a_store_with_another_key(tmp_path, key):
    vectors = unit_vectors(4, 7)
    with WatchlistStore(tmp_path / "a.db", key=key) as source:
        fill(source, vectors)
        source.export(tmp_path / "export.jsonl")
        expected = source.list_identities()
    lines = (tmp_path / "export.jsonl").read_text().splitlines()
    first = json.loads(lines[1])
    assert first["name"] in NAMES and first["metadata"] == METADATA
    assert base64.b64decode(first["templates"][0]["embedding"]) in {v.astype("<f4").tobytes() for v in vectors}
    with WatchlistStore(tmp_path / "b.db", key=os.urandom(32)) as target:
        target.add_identity("Replaced")
        assert target.restore(tmp_path / "export.jsonl") == {"identities": 2, "templates": 4}
        assert target.list_identities() == expected and target.erasure_pending is None
        np.testing.assert_array_equal(target.all_templates()[2], vectors)
        target.checkpoint()
    assert [n for n in [*plaintexts(vectors), b"Replaced"] if n in on_disk(tmp_path / "b.db")] == []


def test_an_encrypted_store_saves_no_index_and_deletes_a_leftover_one(tmp_path, key):
    from worker.config import WatchlistConfig

    path = tmp_path / "w.db"
    with WatchlistStore(path) as store:
        fill(store, unit_vectors(4, 8))
        config = WatchlistConfig(store=path)
        index_file = saved_index_path(config, store)
        assert index_file == tmp_path / "w.db.index"
        WatchlistIndex.load_or_rebuild(store, index_file)
        assert index_file.is_file()  # plaintext vectors, as before encryption
        store.rekey(key)
        assert saved_index_path(config, store) is None and not index_file.exists()


def test_keys_are_parsed_strictly_and_never_quoted():
    text = base64.b64encode(os.urandom(32)).decode()
    assert len(parse_key(text + "\n", "k")) == 32
    for bad in (text[:-4], "not base64 !!", base64.b64encode(os.urandom(16)).decode()):
        with pytest.raises(WatchlistError) as raised:
            parse_key(bad, "watchlist.encryption_key")
        assert bad not in str(raised.value) and "openssl rand -base64 32" in str(raised.value)


def test_a_follower_keeps_an_encrypted_replica_in_step(kafka_broker, tmp_path, key):
    topic = f"watchlist-sealed-{uuid.uuid4().hex[:8]}"
    kafka = KafkaConfig(bootstrap_servers=kafka_broker.bootstrap)
    vectors = unit_vectors(4, 9)
    publisher = WatchlistPublisher(kafka, topic)
    with WatchlistStore(tmp_path / "admin.db") as admin:
        zelda, yusuf = fill(admin, vectors)
        publisher.publish_since(admin, 0)
        version = admin.version
        admin.remove_identity(zelda)
        publisher.publish_since(admin, version)
    publisher.close()
    replica = tmp_path / "replica.db"
    follower = WatchlistFollower(kafka, topic, replica, poll_ms=200, key=key).start()
    try:
        assert follower.caught_up.wait(60), follower.last_error
    finally:
        follower.stop()
    assert follower.errors == 0
    with WatchlistStore(replica, key=key) as store:
        assert [i.id for i in store.list_identities()] == [yusuf]
        np.testing.assert_array_equal(store.all_templates()[2], vectors[2:])
        store.checkpoint()
    assert [n for n in plaintexts(vectors) if n in on_disk(replica)] == []


def test_a_worker_with_a_key_file_follows_the_topic_into_a_sealed_store_and_saves_no_index(kafka_broker, tmp_path):
    topic = f"watchlist-sealed-{uuid.uuid4().hex[:8]}"
    kafka = {"bootstrap_servers": kafka_broker.bootstrap}
    vectors = unit_vectors(4, 10)
    publisher = WatchlistPublisher(KafkaConfig(**kafka), topic)
    with WatchlistStore(tmp_path / "admin.db") as admin:
        fill(admin, vectors)
        publisher.publish_since(admin, 0)
    publisher.close()
    key_text = base64.b64encode(os.urandom(32)).decode()
    key_file = tmp_path / "watchlist.key"
    key_file.write_text(key_text + "\n")
    video = tmp_path / "bars.mp4"
    write_h264_mp4(video, color_bars(20), fps=10)
    store = tmp_path / "sealed.db"
    config = {
        "cameras": [{"id": "cam", "url": str(video), "loop": True}],
        "watchlist": {"store": str(store), "replication_topic": topic, "encryption_key_file": str(key_file)},
        "kafka": kafka,
    }
    worker = WorkerProcess(tmp_path, config, name="sealed").start()
    try:
        worker.wait_ready()
        wait_until(lambda: worker.metric("facewatch_watchlist_identities") == 2, 60, "the topic applied", 0.2)
        assert worker.terminate() == 0
    finally:
        worker.close()
    assert not Path(f"{store}.index").exists()
    assert [n for n in plaintexts(vectors) if n in on_disk(store)] == []
    assert key_text not in worker.log_path.read_text()
    with WatchlistStore(store, key=parse_key(key_text, "k")) as sealed:
        assert sorted(i.name for i in sealed.list_identities()) == sorted(NAMES)
