"""The FAISS watchlist index: kinds, sync with the store, persistence, erasure, concurrency."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from worker.errors import WatchlistError
from worker.watchlist.index import WatchlistIndex, make_faiss_index
from worker.watchlist.store import DEFAULT_MODEL_VERSION, WatchlistStore

MODEL = DEFAULT_MODEL_VERSION


def unit_vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 128)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fill(store: WatchlistStore, people: int, per_person: int, seed: int = 0) -> list[str]:
    ids = []
    for n in range(people):
        person = store.add_identity(f"person {n}")
        store.add_templates(person.id, unit_vectors(per_person, seed * 100_000 + n))
        ids.append(person.id)
    return ids


@pytest.fixture
def store(tmp_path):
    with WatchlistStore(tmp_path / "w.db") as s:
        yield s


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivfpq"])
def test_each_kind_finds_the_nearest_templates(store, kind, caplog):
    fill(store, 30, 3)
    with caplog.at_level(logging.INFO, logger="worker.watchlist.index"):
        index = WatchlistIndex.build(store, kind, MODEL)
    # 90 templates are far too few to train ivfpq: it falls back to exact search, and says so.
    assert index.effective_kind == ("exact" if kind == "ivfpq" else kind)
    assert ("too few to train ivfpq" in caplog.text) == (kind == "ivfpq")
    tids, iids, vectors = store.all_templates()
    queries = vectors + 0.01 * unit_vectors(len(vectors), 99)
    distances, labels, identities = index.search(queries, 5)
    assert distances.shape == labels.shape == identities.shape == (90, 5)
    np.testing.assert_array_equal(labels[:, 0], tids)
    assert list(identities[:, 0]) == iids
    exact = np.linalg.norm(queries - vectors, axis=1)
    np.testing.assert_allclose(distances[:, 0], exact, rtol=1e-4, atol=1e-5)
    assert (np.diff(distances, axis=1) >= -1e-6).all()
    assert index.version == store.version and len(index) == 90


def test_ivfpq_trains_on_a_large_list(store):
    person = store.add_identity("many")
    store.add_templates(person.id, unit_vectors(10_000, 1))
    index = WatchlistIndex.build(store, "ivfpq", MODEL)
    assert index.effective_kind == "ivfpq"
    tids, _, vectors = store.all_templates()
    distances, labels, identities = index.search(vectors[:200], 3)
    assert (labels[:, 0] == tids[:200]).mean() > 0.95  # approximate, but its own vector is nearest
    assert set(identities[:, 0]) == {person.id}
    # Candidates are re-ranked with the exact vectors: the distances are exact, not PQ estimates.
    by_id = dict(zip(tids.tolist(), vectors, strict=True))
    probes = vectors[:200]
    exact = np.array([[np.linalg.norm(by_id[t] - q) for t in row] for row, q in zip(labels, probes, strict=True)])
    assert np.allclose(distances, exact, atol=1e-5)
    assert (np.diff(distances, axis=1) >= 0).all()


def test_ivfpq_erasure_survives_save_and_load(store, tmp_path):
    people = [store.add_identity(f"p{i}") for i in range(2)]
    for i, person in enumerate(people):
        store.add_templates(person.id, unit_vectors(5_000, 10 + i))
    index = WatchlistIndex.build(store, "ivfpq", MODEL)
    assert index.effective_kind == "ivfpq"
    gone_tids = [t.id for t in store.templates(people[0].id)]
    probe = np.stack([t.embedding for t in store.templates(people[0].id)[:50]])
    store.remove_identity(people[0].id)
    index.sync(store)
    index.save(tmp_path / "w.index")
    loaded = WatchlistIndex.load(tmp_path / "w.index")
    for candidate in (index, loaded):
        _, labels, identities = candidate.search(probe, 5)
        assert not np.isin(labels, gone_tids).any() and set(identities.ravel()) == {people[1].id}


def test_fewer_templates_than_k_and_empty_index(store):
    index = WatchlistIndex.build(store, "exact", MODEL)
    distances, labels, identities = index.search(unit_vectors(2, 0), 4)
    assert np.isinf(distances).all() and (labels == -1).all() and (identities == None).all()  # noqa: E711
    fill(store, 1, 2)
    index.sync(store)
    distances, labels, identities = index.search(unit_vectors(2, 0), 4)
    assert np.isfinite(distances[:, :2]).all() and np.isinf(distances[:, 2:]).all()
    assert (labels[:, 2:] == -1).all() and (identities[:, 2:] == None).all()  # noqa: E711


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_sync_applies_adds_and_removals(store, kind):
    ids = fill(store, 5, 2)
    index = WatchlistIndex.build(store, kind, MODEL)
    new = store.add_identity("late")
    new_vectors = unit_vectors(3, 777)
    new_tids = store.add_templates(new.id, new_vectors)
    store.remove_identity(ids[0])
    dropped = store.templates(ids[1])[0].id
    store.remove_templates([dropped])
    transient = store.add_identity("transient")
    store.add_templates(transient.id, unit_vectors(1, 5))
    store.remove_identity(transient.id)
    assert index.sync(store) == 7
    assert index.version == store.version and len(index) == store.stats()["templates"]
    _, labels, identities = index.search(new_vectors, 1)
    assert list(labels[:, 0]) == new_tids and set(identities[:, 0]) == {new.id}
    _, labels, identities = index.search(store.all_templates()[2], 20)
    assert ids[0] not in set(identities.ravel()) and transient.id not in set(identities.ravel())
    assert dropped not in set(labels.ravel())
    assert index.sync(store) == 0


def test_load_or_rebuild_loads_catches_up_or_rebuilds(tmp_path, store, caplog):
    fill(store, 4, 2)
    path = tmp_path / "w.index"
    first = WatchlistIndex.load_or_rebuild(store, path, "exact", MODEL)
    assert path.is_file() and first.version == store.version
    with caplog.at_level(logging.INFO, logger="worker.watchlist.index"):
        again = WatchlistIndex.load_or_rebuild(store, path, "exact", MODEL)
        assert "loaded from" in caplog.text and len(again) == 8
        fill(store, 1, 3, seed=5)
        caught_up = WatchlistIndex.load_or_rebuild(store, path, "exact", MODEL)
        assert "caught up" in caplog.text and len(caught_up) == 11 and caught_up.version == store.version
        other_kind = WatchlistIndex.load_or_rebuild(store, path, "hnsw", MODEL)
        assert "rebuilding" in caplog.text and other_kind.effective_kind == "hnsw"
    path.write_bytes(b"not an index")
    with caplog.at_level(logging.WARNING, logger="worker.watchlist.index"):
        rebuilt = WatchlistIndex.load_or_rebuild(store, path, "exact", MODEL)
    assert "cannot be loaded" in caplog.text and len(rebuilt) == 11
    with pytest.raises(WatchlistError, match="re-enroll"):
        WatchlistIndex.load_or_rebuild(store, path, "exact", "some_other_model")
    with pytest.raises(WatchlistError, match="unknown index kind"):
        make_faiss_index("lsh", 128)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_erasure_reaches_the_saved_index(tmp_path, store, kind):
    ids = fill(store, 6, 2)
    victim = store.templates(ids[2])
    path = tmp_path / "w.index"
    index = WatchlistIndex.load_or_rebuild(store, path, kind, MODEL)
    blob = victim[0].embedding.astype("<f4").tobytes()
    assert blob in path.read_bytes()  # raw vectors are in the file, so the check below means something
    store.remove_identity(ids[2])
    index.sync(store)  # saves at once, because it removed templates
    assert blob not in path.read_bytes()
    for reloaded in (WatchlistIndex.load(path), WatchlistIndex.load_or_rebuild(store, path, kind, MODEL)):
        _, _, identities = reloaded.search(np.stack([t.embedding for t in victim]), 12)
        assert ids[2] not in set(identities.ravel())
    # A stale saved index (the store changed while no worker ran) is cleaned when next loaded.
    stale = WatchlistIndex.load(path)
    store.remove_identity(ids[3])
    WatchlistIndex.load_or_rebuild(store, path, kind, MODEL)
    gone = store.all_templates()[2]
    assert stale.version < store.version and len(WatchlistIndex.load(path)) == len(gone)


def test_search_while_syncing_from_another_thread(store):
    ids = fill(store, 20, 2)
    index = WatchlistIndex.build(store, "exact", MODEL)
    queries = store.all_templates()[2]
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                _, labels, identities = index.search(queries, 5)
                found = labels[:, 0] >= 0
                assert (identities[found, 0] != None).all()  # noqa: E711
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for thread in threads:
        thread.start()
    for n in range(15):
        person = store.add_identity(f"extra {n}")
        store.add_templates(person.id, unit_vectors(2, 1000 + n))
        store.remove_identity(ids[n])
        index.sync(store)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(index) == store.stats()["templates"] == 40
    _, _, identities = index.search(queries, 40)
    assert not set(ids[:15]) & set(identities.ravel())


def real_like(n: int, seed: int) -> np.ndarray:
    """Vectors spread in few directions, as face embeddings are (many near-ties, unlike unit noise)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(np.random.default_rng(7).standard_normal((128, 128)))
    scales = 0.2 * np.exp(-np.arange(128) / 20.0)
    return (rng.standard_normal((n, 128)) * scales @ basis.T + 0.1).astype(np.float32)


def from_rows(vectors: np.ndarray, kind: str, per_identity: int = 1) -> WatchlistIndex:
    tids = np.arange(len(vectors), dtype=np.int64) * 3 + 5  # ids are not positions
    iids = [f"id{row // per_identity}" for row in range(len(vectors))]
    return WatchlistIndex.from_arrays(tids, iids, vectors, kind, MODEL, nlist=32)  # 32 lists train on 1,248


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivfpq"])
def test_removal_never_rebuilds_and_removed_never_come_back(kind, tmp_path):
    vectors = real_like(4000, 1)
    index = from_rows(vectors, kind, per_identity=2)
    assert index.effective_kind == kind
    faiss_index, storage, slot_tids = index._index, index._storage, index._slot_tid
    kept_vector = index._vectors(np.array([2]))[0].copy()
    # Remove 2% of the identities, one call each, as `facewatch watchlist remove` does.
    victims = np.arange(0, 4000, 40)
    for row in victims:
        assert index.remove(np.array([row * 3 + 5, (row + 1) * 3 + 5])) == 2
    # Work in proportion to the removal: the same FAISS index, storage and tables, nothing rebuilt ...
    assert index._index is faiss_index and index._storage is storage and index._slot_tid is slot_tids
    assert index.compactions == 0 and len(index) == 4000 - 2 * len(victims)
    assert index.identity_count() == 2000 - len(victims)
    # ... the removed vectors are zeros in memory (deleted, not just unreachable), the others untouched.
    gone = np.concatenate([victims, victims + 1])
    assert not index._vectors(gone).any()
    np.testing.assert_array_equal(index._vectors(np.array([2]))[0], kept_vector)
    removed_ids = {f"id{row // 2}" for row in victims}
    for candidate in (index, (index.save(tmp_path / "w.index"), WatchlistIndex.load(tmp_path / "w.index"))[1]):
        distances, labels, identities = candidate.search(vectors[gone], 10)
        assert not np.isin(labels, gone * 3 + 5).any() and not removed_ids & set(identities.ravel())
        assert (labels >= 0).all() and np.isfinite(distances).all()  # k live neighbours still found
        assert candidate.identity_count() == 2000 - len(victims)
    assert vectors[victims[0]].astype("<f4").tobytes() not in (tmp_path / "w.index").read_bytes()
    # The id mapping holds for the live ones: each finds itself, with its identity.
    live = np.setdiff1d(np.arange(0, 4000, 7), gone)
    distances, labels, identities = index.search(vectors[live], 3)
    assert (labels[:, 0] == live * 3 + 5).mean() >= 0.99
    assert list(identities[labels[:, 0] == live * 3 + 5, 0]) == [
        f"id{row // 2}" for row in live[labels[:, 0] == live * 3 + 5]
    ]


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivfpq"])
def test_compaction_past_the_dead_fraction(kind, monkeypatch):
    vectors = real_like(4000, 2)
    index = from_rows(vectors, kind)
    before = index._index
    gone = np.arange(0, 4000, 4)  # exactly 25%: the threshold
    index.remove(gone[:-1] * 3 + 5)
    assert index.compactions == 0 and index._index is before and index.dead_fraction < 0.25
    index.remove(gone[-1:] * 3 + 5)
    index.wait_compaction()
    assert index.compactions == 1 and index._index is not before and index.dead_fraction == 0
    assert len(index) == 3000 and index._slots == 3000 and index.effective_kind == kind
    _, labels, _ = index.search(vectors[gone], 5)
    assert not np.isin(labels, gone * 3 + 5).any() and (labels >= 0).all()
    live = np.setdiff1d(np.arange(4000), gone)[::5]
    _, labels, identities = index.search(vectors[live], 1)
    assert (labels[:, 0] == live * 3 + 5).mean() >= 0.99
    assert (identities[:, 0] == np.array([f"id{row}" for row in live], dtype=object)).mean() >= 0.99


def test_background_compaction_keeps_changes_made_meanwhile(monkeypatch):
    monkeypatch.setattr("worker.watchlist.index.COMPACT_INLINE_MAX", 1000)
    vectors = real_like(4000, 3)
    index = from_rows(vectors[:3000], "hnsw")
    started = threading.Event()
    release = threading.Event()
    real_add = WatchlistIndex._add

    def slow_add(self, *args, **kwargs):  # hold the compaction's build until the test has made its changes
        if self is not index:
            started.set()
            release.wait(30)
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(WatchlistIndex, "_add", slow_add)
    index.remove(np.arange(0, 750) * 3 + 5)  # 25% dead: compaction starts in a thread
    assert started.wait(30)
    index.remove(np.array([2000 * 3 + 5]))  # during the rebuild: removed ...
    index.add(np.arange(3000, 4000) * 3 + 5, [f"id{row}" for row in range(3000, 4000)], vectors[3000:])  # ... added
    assert index.search(vectors[:1], 1)[1][0, 0] != 5  # searches go on meanwhile
    release.set()
    index.wait_compaction()
    # The new index holds the later add, and the later removal as its one dead slot.
    assert index.compactions == 1 and index._dead == 1 and len(index) == 4000 - 751 == index._slots - 1
    _, labels, _ = index.search(vectors[[2000, 3500, 100]], 1)
    assert labels[0, 0] != 2000 * 3 + 5 and labels[1, 0] == 3500 * 3 + 5 and labels[2, 0] != 100 * 3 + 5


def test_auto_kind_by_size_and_growth(store, monkeypatch):
    monkeypatch.setattr("worker.watchlist.index.AUTO_IVFPQ_MIN", 4000)
    small = from_rows(real_like(3000, 4), "auto")
    assert small.effective_kind == "exact" and small.kind == "auto"
    large = from_rows(real_like(5000, 4), "auto")
    assert large.effective_kind == "ivfpq"
    # Grown past twice the threshold by adds: rebuilt as ivfpq, everything still found.
    more = real_like(6000, 5)
    small.add(np.arange(3000, 9000) * 3 + 5, [f"id{row}" for row in range(3000, 9000)], more)
    small.wait_compaction()
    assert small.effective_kind == "ivfpq" and len(small) == 9000 and small.compactions == 1
    _, labels, _ = small.search(more[:100], 1)
    assert (labels[:, 0] == np.arange(3000, 3100) * 3 + 5).mean() >= 0.95


def test_adds_out_of_id_order_keep_the_mapping():
    vectors = real_like(300, 6)
    index = WatchlistIndex.from_arrays(np.arange(100, 400), [f"a{i}" for i in range(300)], vectors, "exact")
    extra = real_like(50, 7)
    index.add(np.arange(50), [f"b{i}" for i in range(50)], extra)  # below every id already there
    _, labels, identities = index.search(np.concatenate([vectors[:5], extra[:5]]), 1)
    assert list(labels[:, 0]) == [100, 101, 102, 103, 104, 0, 1, 2, 3, 4]
    assert list(identities[:, 0]) == ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2", "b3", "b4"]
    with pytest.raises(WatchlistError, match="already in the index"):
        index.add(np.array([120]), ["c"], extra[:1])


def test_search_threads_apply_to_the_searching_thread(store):
    import faiss

    from worker.config import WatchlistConfig
    from worker.watchlist.identify import Identifier

    fill(store, 3, 2)
    index = WatchlistIndex.build(store, "exact", MODEL)
    Identifier.from_config(store, index, WatchlistConfig(search_threads=1))
    assert index.search_threads == 1
    seen: list[int] = []

    def search() -> None:  # OpenMP's thread count is per calling thread: a fresh thread starts at the default
        before = faiss.omp_get_max_threads()
        index.search(unit_vectors(4, 1), 2)
        seen.extend([before, faiss.omp_get_max_threads()])

    thread = threading.Thread(target=search)
    thread.start()
    thread.join()
    assert seen[1] == 1


def test_ivfpq_recipe_by_size():
    """Lists grow as sqrt(n)/2; 18% of them are probed (at least 64); from OPQ_MIN the codes are rotated and halved."""
    import faiss

    from worker.watchlist.index import MIN_PROBES, OPQ_MIN, PROBE_SHARE, default_probes

    assert default_probes(10) == 10 and default_probes(100) == MIN_PROBES
    assert default_probes(500) == 90 == int(np.ceil(PROBE_SHARE * 500))
    small = make_faiss_index("ivfpq", 128, OPQ_MIN - 1)
    large = make_faiss_index("ivfpq", 128, 1_000_000)
    assert not isinstance(small, faiss.IndexPreTransform) and isinstance(large, faiss.IndexPreTransform)
    small_ivf, large_ivf = (faiss.downcast_index(faiss.extract_index_ivf(i)) for i in (small, large))
    assert (small_ivf.nlist, small_ivf.nprobe, small_ivf.M) == (223, MIN_PROBES, 64)
    assert (large_ivf.nlist, large_ivf.nprobe, large_ivf.M) == (500, 90, 32)
    # Asked for explicitly, either way round.
    assert isinstance(make_faiss_index("ivfpq", 128, 50_000, opq=True), faiss.IndexPreTransform)
    assert not isinstance(make_faiss_index("ivfpq", 128, 1_000_000, opq=False), faiss.IndexPreTransform)


def test_rotated_ivfpq_searches_removes_and_saves(tmp_path):
    """The OPQ-rotated form (the default from 200k templates) keeps every promise of the unrotated one."""
    vectors = real_like(4000, 3)
    tids = np.arange(len(vectors), dtype=np.int64) * 3 + 5
    iids = [f"id{row}" for row in range(len(vectors))]
    index = WatchlistIndex.from_arrays(tids, iids, vectors, "ivfpq", MODEL, nlist=32, opq=True)
    settings = index.search_settings()
    assert index.effective_kind == "ivfpq" and settings["opq"] is True and settings["refine"] == 256
    assert settings["nlist"] == 32 and settings["nprobe"] == 32
    probes = np.arange(0, 4000, 9)
    distances, labels, identities = index.search(vectors[probes], 3)
    assert (labels[:, 0] == tids[probes]).mean() >= 0.99
    exact = np.linalg.norm(vectors[(labels[:, 1] - 5) // 3] - vectors[probes], axis=1)
    np.testing.assert_allclose(distances[:, 1], exact, rtol=1e-4, atol=1e-5)  # re-ranked: exact distances
    gone = probes[:20]
    assert index.remove(tids[gone]) == 20 and index.compactions == 0
    index.save(tmp_path / "w.index")
    loaded = WatchlistIndex.load(tmp_path / "w.index")
    assert loaded.search_settings() == settings
    for candidate in (index, loaded):
        _, labels, identities = candidate.search(vectors[gone], 10)
        assert not np.isin(labels, tids[gone]).any() and not {f"id{row}" for row in gone} & set(identities.ravel())
    _, labels, _ = loaded.search(vectors[probes[20:]], 1)
    assert (labels[:, 0] == tids[probes[20:]]).mean() >= 0.99


def test_ivfpq_grown_by_adds_is_retrained_for_its_size(tmp_path):
    """Lists chosen for 3,000 templates are too few for 12,000: the index retrains itself, nothing lost."""
    import faiss

    from worker.watchlist.index import RETRAIN_GROWTH

    vectors = real_like(3000 * RETRAIN_GROWTH, 4)
    tids = np.arange(len(vectors), dtype=np.int64) * 3 + 5
    iids = [f"id{row}" for row in range(len(vectors))]
    index = WatchlistIndex.from_arrays(tids[:3000], iids[:3000], vectors[:3000], "ivfpq", MODEL)
    assert index.search_settings()["nlist"] == 27  # sqrt(3000) / 2
    index.save(tmp_path / "w.index")
    index = WatchlistIndex.load(tmp_path / "w.index")  # what it was trained for survives a restart
    index.add(tids[3000:-1], iids[3000:-1], vectors[3000:-1])
    assert index.compactions == 0 and index.search_settings()["nlist"] == 27  # not yet 4x
    index.add(tids[-1:], iids[-1:], vectors[-1:])
    index.wait_compaction()
    assert index.compactions == 1 and len(index) == len(vectors)
    assert index.search_settings()["nlist"] == 54 == int(np.sqrt(len(vectors)) / 2)
    assert faiss.extract_index_ivf(index._ivf).ntotal == len(vectors)
    probes = np.arange(0, len(vectors), 7)
    _, labels, identities = index.search(vectors[probes], 1)
    assert (labels[:, 0] == tids[probes]).mean() >= 0.99
    assert list(identities[labels[:, 0] == tids[probes], 0]) == [
        iids[row] for row in probes[labels[:, 0] == tids[probes]]
    ]
    # Removals alone never retrain: a compaction for dead slots keeps the trained lists.
    index.remove(tids[: len(vectors) // 3])
    index.wait_compaction()
    assert index.compactions == 2 and index.search_settings()["nlist"] == 54
