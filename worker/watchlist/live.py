"""The watchlist a running worker holds: its store, FAISS index and identifier, kept in step.

``follow`` applies changes another process made to the store (the CLI, or the replication
follower): the index syncs, and each removed identity is handed to ``forget`` so the worker can
erase it from its decision state too. It also retries an erasure left pending on disk (a reader
kept the checkpoint from finishing) and shows it on ``facewatch_watchlist_erasure_pending``.
With ``watchlist.classifier: svm`` the SVM is trained before the worker starts; each change
retrains it on a trainer thread of its own (a thousand identities take about a minute), and
``follow`` hands the identifier the new one whole once it reflects the store's current version.
Until then, and whenever the list has too few templates for an SVM, the identifier decides by the
nearest template; the log and ``facewatch_watchlist_svm_active`` say which rule is deciding.

The store's connection reads in autocommit mode, every statement run to its end: between calls
it holds no read snapshot, so the worker never keeps another process's removal on disk.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from worker.config import Settings, WatchlistConfig
from worker.errors import WatchlistError
from worker.obs.metrics import Metrics
from worker.watchlist.identify import Identification, Identifier
from worker.watchlist.index import WatchlistIndex, saved_index_path
from worker.watchlist.store import WatchlistStore
from worker.watchlist.svm import SvmClassifier

log = logging.getLogger(__name__)


class Watchlist:
    """The store, its FAISS index and the identifier; follows the store's changes."""

    def __init__(self, settings: Settings, model_version: str, metrics: Metrics) -> None:
        config = settings.watchlist
        self.store = WatchlistStore.from_config(config)
        index_path = saved_index_path(config, self.store)
        self.index = WatchlistIndex.load_or_rebuild(self.store, index_path, config.index_kind, model_version)
        self.identifier = Identifier.from_config(self.store, self.index, config)
        self.config = config
        self.metrics = metrics
        self.seen_version = self.store.version
        self.erasure_pending = False  # as last seen: a removal's data may still be on disk
        self.svm_refusal: str | None = None  # why the SVM is not in use, as last trained
        self._svm_training = _SvmTrainer(self.store, config) if config.classifier == "svm" else None
        self.metrics.watchlist_svm_active.set(0)
        self.update_gauges()
        self._retrain()
        if self._svm_training is not None:
            # At start the worker is not serving yet: its first frames are decided by the SVM.
            self.wait_for_svm(float("inf"))
        self._retry_erasure()

    def identify(self, embeddings: np.ndarray) -> list[Identification]:
        """Match, uncertain or unknown for each row of ``embeddings``."""
        return self.identifier.identify(embeddings)

    def fragile(self, results: list[Identification], band: float) -> np.ndarray:
        """The answers a distance change of up to ``band`` could change (Identifier.fragile)."""
        return self.identifier.fragile(results, band)

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
        self._take_trained_svm()
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
        self._retrain()
        log.info("watchlist now at version %d", version)
        return True

    def _retrain(self) -> None:
        """The store changed: the nearest rule decides until an SVM of this version is trained."""
        if self._svm_training is None:
            return
        # The old SVM knows nobody enrolled since and may know someone removed: it stops deciding now.
        self.identifier.classifier = None
        self.metrics.watchlist_svm_active.set(0)
        self._svm_training.request()

    def _take_trained_svm(self, wait_s: float = 0.0) -> None:
        if self._svm_training is None:
            return
        outcome = self._svm_training.take(wait_s)
        if outcome is None:
            return
        if isinstance(outcome, WatchlistError):
            if str(outcome) != self.svm_refusal:
                log.warning("watchlist.classifier svm: %s; deciding by the nearest template until then", outcome)
            self.svm_refusal = str(outcome)
            return
        if outcome.version != self.store.version:
            self._svm_training.request()  # a change came in while it trained: train again
            return
        self.identifier.classifier = outcome
        self.metrics.watchlist_svm_active.set(1)
        log.info("watchlist.classifier svm: trained on version %d, deciding", outcome.version)
        self.svm_refusal = None

    def wait_for_svm(self, timeout_s: float) -> bool:
        """Block until the SVM of the current version decides (tests, ``identify``); False on time out."""
        deadline = time.monotonic() + timeout_s
        while True:
            # The trainer queues its outcome before it goes idle: while it is busy, block on the outcome.
            busy = self._svm_training is not None and self._svm_training.busy
            self._take_trained_svm(max(0.0, deadline - time.monotonic()) if busy else 0.0)
            if self._svm_training is None or self.identifier.classifier is not None:
                return self.identifier.classifier is not None
            if not self._svm_training.busy or time.monotonic() > deadline:  # idle: nothing more is coming
                return False

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
        """Stop the SVM trainer and close the store."""
        if self._svm_training is not None:
            self._svm_training.stop()
        self.store.close()


class _SvmTrainer:
    """One daemon thread that trains SVMs on request; the watchlist's owner takes the results.

    Requests coalesce: however many changes arrive while it trains, it trains once more, on the
    store as it then is. Its only shared state is the two queues.
    """

    def __init__(self, store: WatchlistStore, config: WatchlistConfig) -> None:
        self._store = store
        self._config = config
        self._requests: queue.Queue[bool] = queue.Queue(maxsize=1)
        self._results: queue.Queue[SvmClassifier | WatchlistError] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="svm-trainer", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return not self._idle.is_set() or not self._requests.empty()

    def request(self) -> None:
        self._idle.clear()
        with contextlib.suppress(queue.Full):  # a training is already due: it reads the store as it is then
            self._requests.put_nowait(True)

    def take(self, wait_s: float = 0.0) -> SvmClassifier | WatchlistError | None:
        """The newest finished outcome, or None; waits up to ``wait_s`` for one when none is ready yet."""
        try:
            if wait_s <= 0:
                outcome = self._results.get_nowait()
            else:  # queue.get takes None, not inf, for no time limit
                outcome = self._results.get(timeout=None if math.isinf(wait_s) else wait_s)
        except queue.Empty:
            return None
        while True:
            try:
                outcome = self._results.get_nowait()
            except queue.Empty:
                return outcome

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):  # a daemon thread: it ends with the process anyway
            self._requests.put_nowait(False)

    def _run(self) -> None:
        while self._requests.get():
            try:
                self._results.put(SvmClassifier.from_config(self._store, self._config))
            except WatchlistError as exc:
                self._results.put(exc)
            except Exception as exc:  # a failed training must not end the thread
                log.exception("watchlist.classifier svm: training failed")
                self._results.put(WatchlistError(f"SVM training failed: {exc}"))
            finally:
                if self._requests.empty():
                    self._idle.set()
