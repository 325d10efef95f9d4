"""The watchlist a running worker holds: its store, FAISS index and identifier, kept in step.

``follow`` applies changes another process made to the store (the CLI, or the replication
follower): the index syncs, and each removed identity is handed to ``forget`` so the worker can
erase it from its decision state too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from worker.config import Settings
from worker.obs.metrics import Metrics
from worker.watchlist.identify import Identification, Identifier
from worker.watchlist.index import WatchlistIndex
from worker.watchlist.store import WatchlistStore

log = logging.getLogger(__name__)


class Watchlist:
    """The store, its FAISS index and the identifier; follows the store's changes."""

    def __init__(self, settings: Settings, model_version: str, metrics: Metrics) -> None:
        config = settings.watchlist
        self.store = WatchlistStore(config.store)
        index_path = config.index_path or Path(f"{config.store}.index")
        self.index = WatchlistIndex.load_or_rebuild(self.store, index_path, config.index_kind, model_version)
        self.identifier = Identifier.from_config(self.store, self.index, config)
        self.metrics = metrics
        self.seen_version = self.store.version
        self.update_gauges()

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

    def close(self) -> None:
        """Close the store."""
        self.store.close()
