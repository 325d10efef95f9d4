"""The worker's watchlist follows store changes made by another process (the CLI), erasure included."""

from __future__ import annotations

import numpy as np

from tests.infra.sqlite_reader import ReaderMidRead
from worker.config import Settings
from worker.obs.metrics import Metrics
from worker.watchlist.live import Watchlist
from worker.watchlist.store import DEFAULT_MODEL_VERSION, WatchlistStore


def unit_vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 128)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_worker_watchlist_follows_adds_and_removals(tmp_path):
    path = tmp_path / "w.db"
    with WatchlistStore(path) as cli:
        ada, _ = cli.add_identity_with_templates("Ada", unit_vectors(2, 1))
    settings = Settings(watchlist={"store": str(path)})
    metrics = Metrics()
    watchlist = Watchlist(settings, DEFAULT_MODEL_VERSION, metrics)
    forgotten: list[str] = []
    try:
        assert (tmp_path / "w.db.index").is_file() and watchlist.version == 1
        ada_vectors = unit_vectors(2, 1)
        assert watchlist.identify(ada_vectors[:1])[0].name == "Ada"

        with WatchlistStore(path) as cli:  # another connection, as the CLI would be
            bob, _ = cli.add_identity_with_templates("Bob", unit_vectors(1, 2))
            cli.remove_identity(ada.id)
        (stale,) = watchlist.identify(ada_vectors[:1])
        assert stale.identity_id is None  # the name cache already saw the store change

        watchlist.follow(forgotten.append)
        assert forgotten == [ada.id] and watchlist.version == 3
        assert metrics.watchlist_identities._value.get() == 1 and metrics.watchlist_templates._value.get() == 1
        (result,) = watchlist.identify(ada_vectors[:1])
        assert result.candidate_id != ada.id
        assert watchlist.identify(unit_vectors(1, 2))[0].identity_id == bob.id
        assert ada_vectors[0].astype("<f4").tobytes() not in (tmp_path / "w.db.index").read_bytes()
        watchlist.follow(forgotten.append)  # nothing new: nothing happens
        assert forgotten == [ada.id]
    finally:
        watchlist.close()


def test_the_worker_holds_no_read_snapshot_and_finishes_a_pending_erasure(tmp_path):
    path = tmp_path / "w.db"
    vectors = unit_vectors(2, 3)
    with WatchlistStore(path) as cli:
        cli.add_identity_with_templates("Keeper", unit_vectors(1, 4))
        gone, _ = cli.add_identity_with_templates("Zelda Quartermaine", vectors)
    metrics = Metrics()
    watchlist = Watchlist(Settings(watchlist={"store": str(path)}), DEFAULT_MODEL_VERSION, metrics)
    try:
        assert watchlist.identify(vectors[:1])[0].identity_id == gone.id
        watchlist.follow(lambda _: None)
        with WatchlistStore(path, erasure_wait_s=0) as cli:
            # Between reloads the worker's connection is idle: a checkpoint needs no wait for it.
            assert cli.checkpoint(0)
            with ReaderMidRead(path):  # someone else is reading: the CLI's removal stays pending
                cli.remove_identity(gone.id)
                watchlist.follow(lambda _: None)
                assert metrics.watchlist_erasure_pending._value.get() == 1
                assert b"Zelda Quartermaine" in b"".join(p.read_bytes() for p in tmp_path.glob("w.db*"))
        # The CLI is gone; the worker's next reload finishes the erasure.
        watchlist.follow(lambda _: None)
        assert metrics.watchlist_erasure_pending._value.get() == 0
        with WatchlistStore(path) as check:
            assert check.erasure_pending is None
        on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("w.db*"))
        assert b"Zelda Quartermaine" not in on_disk and vectors[0].astype("<f4").tobytes() not in on_disk
    finally:
        watchlist.close()
