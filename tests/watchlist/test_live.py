"""The worker's watchlist follows store changes made by another process (the CLI), erasure included."""

from __future__ import annotations

import numpy as np

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
