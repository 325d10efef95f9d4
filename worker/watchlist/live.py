"""The watchlist a running worker holds: its store, FAISS index and identifier, kept in step.

``follow`` applies changes another process made to the store (the CLI, or the replication
follower): the index syncs, and each removed identity is handed to ``forget`` so the worker can
erase it from its decision state too. It also retries an erasure left pending on disk (a reader
kept the checkpoint from finishing) and shows it on ``facewatch_watchlist_erasure_pending``.

The store's connection reads in autocommit mode, every statement run to its end: between calls
it holds no read snapshot, so the worker never keeps another process's removal on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from worker.config import Settings
from worker.obs.metrics import Metrics
from worker.watchlist.identify import Identification, Identifier
from worker.watchlist.index import WatchlistIndex, saved_index_path
from worker.watchlist.store import WatchlistStore

log = logging.getLogger(__name__)


class Watchlist:
    """The store, its FAISS index and the identifier; follows the store's changes."""

    def __init__(self, settings: Settings, model_version: str, metrics: Metrics) -> None:
        config = settings.watchlist
        self.store = WatchlistStore.from_config(config)
        index_path = saved_index_path(config, self.store)
        self.index = WatchlistIndex.load_or_rebuild(self.store, index_path, config.index_kind, model_version)
        self.identifier = Identifier.from_config(self.store, self.index, config)
        self.metrics = metrics
        self.seen_version = self.store.version
        self.erasure_pending = False  # as last seen: a removal's data may still be on disk
        self.update_gauges()
        self._retry_erasure()

    def identify(self, embeddings: np.ndarray) -> list[Identification]:
        """Match, uncertain or unknown for each row of ``embeddings``."""
        return self.identifier.identify(embeddings)

    @property
    def version(self) -> int:
        """The index's version: the one every Identification carries."""
        return self.index.version

    def update_gauges(self) -> None:
        """Identities, templates and store version on the worker's gauges."""
        stats = self.store.stats()
        self.metrics.watchlist_identities.set(stats["identities"])
        self.metrics.watchlist_templates.set(stats["templates"])
        self.metrics.watchlist_version.set(self.store.version)

    def follow(self, forget: Callable[[str], None]) -> bool:
        """Apply store changes made since the last call: index sync, and erasure from every cache.

        ``forget`` gets each removed identity's id. Returns whether anything changed.
        """
        self._retry_erasure()
        version = self.store.version
        if version == self.seen_version:
            return False
        removed = [c.identity_id for c in self.store.changes_since(self.seen_version) if c.op == "remove_identity"]
        self.index.sync(self.store)
        for identity_id in removed:
            if identity_id:
                forget(identity_id)
        self.seen_version = version
        self.update_gauges()
        log.info("watchlist now at version %d", version)
        return True

    def _retry_erasure(self) -> None:
        if self.store.erasure_pending is None:
            self.erasure_pending = False
            self.metrics.watchlist_erasure_pending.set(0)
            return
        # No waiting here: this runs on the main loop; a reader still busy is tried again next time.
        erasure = self.store.finish_erasure(wait_s=0)
        if erasure.complete:
            log.info("watchlist: pending erasure completed (%s)", erasure.detail)
        elif not self.erasure_pending:
            log.warning("watchlist: %s; retrying every reload", erasure.detail)
        self.erasure_pending = not erasure.complete
        self.metrics.watchlist_erasure_pending.set(1 if self.erasure_pending else 0)

    def close(self) -> None:
        """Close the store."""
        self.store.close()
