"""The FAISS index over the watchlist's templates: batched nearest-template search.

Kinds (``watchlist.index_kind``):

- ``auto`` (default): ``exact`` below ``AUTO_IVFPQ_MIN`` templates, ``ivfpq`` from there on; chosen
  at each build and rebuilt in the background when the list outgrows ``exact``.
- ``exact``: brute-force L2 over every template (IndexFlatL2); exact, fine to ~100k.
- ``hnsw``: graph search (IndexHNSWFlat); fast on large lists, approximate.
- ``ivfpq``: inverted lists of 4-bit product-quantised codes scanned with SIMD (fast scan), the
  best candidates per face (``REFINE``) re-ranked by FAISS with the exact vectors (IndexRefine),
  so the distances the thresholds see are exact. From ``OPQ_MIN`` templates the vectors are
  rotated first (OPQ) and coded in half the bytes. For very large lists (docs/benchmarks.md, "The
  watchlist's index at 1M": a batch of 32 faces in 7.5 ms p50, 8.6 ms p99 at recall@1 0.992 with
  one search thread on the idle 2-core machine). Needs training; with too few templates it falls
  back to ``exact``.

Every template lives in a *slot*: its position in the FAISS storage (and its id in the inverted
lists). Slots are appended in template-id order (the store's ids only grow), so a template id is
found by binary search, and a removal touches only the removed slots: it zeroes their vectors in
place (deletion is real: the vectors are gone from memory and from the next saved file), deletes
their codes from the inverted lists (ivfpq), and marks them dead, so ``exact`` and ``hnsw``
searches skip them with a FAISS ID selector. Nothing is rebuilt on a removal. When dead slots
pass ``COMPACT_DEAD_FRACTION`` of the storage, a compaction rebuilds the index from the live
templates in a background thread and swaps it in (ivfpq reuses its trained quantizers); searches
go on meanwhile. Small indexes compact at once. An ivfpq index grown by adds to ``RETRAIN_GROWTH``
times the templates it was trained for is rebuilt the same way, but trained afresh for its size.

The index follows the store through its change log (``sync``) and can be saved next to the store
so a restart does not re-read every template; a saved index is used only when its store version,
model and kind all match the store, otherwise it is rebuilt. A sync that removed templates saves
the index again at once, so a removed person's vectors do not linger in the file on disk.

An encrypted store's index is never saved (``saved_index_path``): the file would hold every vector
in plaintext beside the sealed store, and sealing it too would only save a rebuild that costs
about a second per 100k templates (docs/watchlist.md). It is built from the store in memory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from worker.config import WatchlistConfig
from worker.errors import WatchlistError
from worker.models.face_spec import EMBEDDING_SIZE
from worker.runtime.progress import progress_bar
from worker.watchlist.store import WatchlistStore, private_file

log = logging.getLogger(__name__)

KINDS = ("auto", "exact", "hnsw", "ivfpq")
# 3: slots (positions) as FAISS ids, dead slots, ivfpq as IndexRefine; 4: the ivfpq recipe of sqrt(n)/2
# lists, 18% probed, OPQ from 200k templates, and the size it was trained for (older files are rebuilt
# once, so an upgrade gets the faster recipe)
INDEX_FORMAT_VERSION = 4
PROGRESS_ABOVE = 50_000  # templates; smaller rebuilds take well under a second
ADD_CHUNK = 10_000
PQ_BITS = 4  # fast-scan codes
IVF_TRAIN_MAX = 200_000
# ivfpq probes this share of its lists, and at least MIN_PROBES (smaller lists are cheap to scan, and
# at 100k templates 32 probes of 158 lists found only 99.0%, 64 found 99.9%). At 1M, 18% found the exact
# nearest template for 99.2% of LFW faces, 15% for 98.8% (docs/benchmarks.md). Recall follows the
# share scanned, so the cost of a search grows with the list's size: about 10x from 1M to 10M.
PROBE_SHARE = 0.18
MIN_PROBES = 64
# From OPQ_MIN templates on, ivfpq rotates the vectors (OPQ, trained with the lists) and codes them
# in half the bytes: the scan, most of a search, takes half the time, and the rotation keeps the
# coarser codes ranking well enough for a wider re-ranking to recover the rest (at 1M, batch 32, one
# thread: recall@1 0.992 at p99 8.6 ms, where the unrotated codes needed about 9-10 ms for 0.99;
# docs/benchmarks.md). Training the rotation takes 40-60 s whatever the size, which smaller lists,
# quick to scan anyway, are spared.
OPQ_MIN = 200_000
OPQ_SUBQUANTIZERS = 32
REFINE = 96  # candidates per face re-ranked with the exact vectors (at least 4 per result)
REFINE_ROTATED = 256  # the same, for the rotated index's coarser codes
# auto: exact search costs ~0.08 ms per 1k templates for a batch of 32 on 2 cores, ivfpq ~2 ms at
# 100k; they cross near 20k, where ivfpq also has enough templates to train (docs/benchmarks.md).
AUTO_IVFPQ_MIN = 20_000
# Dead slots cost memory (zeroed vectors) and, for exact and hnsw, search work; past this fraction
# the index is compacted. Below COMPACT_INLINE_MAX slots a compaction takes milliseconds and runs
# at once; above it, in a background thread.
COMPACT_DEAD_FRACTION = 0.25
# An ivfpq index's lists, probes and rotation are chosen for the size it was trained at; grown by
# adds to this many times that size, it is retrained (in the background, as a compaction is), so a
# list grown from 100k to 1M does not scan 40% of its codes through 158 lists.
RETRAIN_GROWTH = 4
COMPACT_INLINE_MAX = 50_000


def saved_index_path(config: WatchlistConfig, store: WatchlistStore) -> Path | None:
    """Where the index is saved: None for an encrypted store, and a file left from before encryption is deleted."""
    path = Path(config.index_path or f"{config.store}.index")
    if not store.encrypted:
        return path
    if path.is_file():
        path.unlink()  # plaintext vectors of every template: biometric data the key was meant to protect
        log.info("watchlist index %s deleted: the store is encrypted, so its index stays in memory", path)
    return None


def ivfpq_min_templates(nlist: int) -> int:
    """Templates needed to train an IVF-PQ index: k-means wants ~39 points per centroid."""
    return 39 * max(nlist, 2**PQ_BITS)


def auto_kind(templates: int) -> str:
    """The kind ``auto`` builds for a list of ``templates``: exact when small, ivfpq when large."""
    return "ivfpq" if templates >= AUTO_IVFPQ_MIN else "exact"


def _ivf_lists(n_hint: int) -> int:
    # ~sqrt(n)/2 lists (500 at 1M), never more than 39 training points each allow. Each probed list has
    # its own look-up tables to compute: at the same recall, fewer and longer lists had about the same
    # p50 and a shorter tail (unrotated codes at 1M: recall@1 0.992 at p99 9.2 ms with 512 lists, 0.9935
    # at 12.8 ms with 2,048; docs/benchmarks.md, "The watchlist's index at 1M").
    return int(min(4096, max(16, min(math.sqrt(max(n_hint, 1)) / 2, n_hint // 39))))


def default_probes(nlist: int) -> int:
    """Lists probed per face: ``PROBE_SHARE`` of them, at least ``MIN_PROBES`` (all, for small indexes)."""
    return int(min(nlist, max(MIN_PROBES, math.ceil(PROBE_SHARE * nlist))))


def _rotated(ivf: faiss.Index | None) -> bool:
    """Whether an ivfpq index rotates its vectors (OPQ) before coding them."""
    return isinstance(ivf, faiss.IndexPreTransform)


def make_faiss_index(kind: str, dim: int = EMBEDDING_SIZE, n_hint: int = 0, **params: Any) -> faiss.Index:
    """A new, empty FAISS index of ``kind`` whose ids are positions; returns squared L2 distances.

    ``ivfpq`` is the inverted-list part only (untrained; train it, then add with ids). Parameters:
    hnsw: ``m`` (32), ``ef_construction`` (80), ``ef_search`` (64); ivfpq: ``nlist`` (from n_hint),
    ``opq`` (rotate first; default from ``OPQ_MIN`` templates), ``m`` (sub-quantizers of 4 bits: 64,
    32 when rotated), ``nprobe`` (``default_probes``); ``refine`` (``REFINE`` or ``REFINE_ROTATED``
    candidates re-ranked per face) is applied by ``WatchlistIndex``.
    """
    if kind == "exact":
        return faiss.IndexFlatL2(dim)
    if kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, int(params.get("m", 32)))
        graph.hnsw.efConstruction = int(params.get("ef_construction", 80))
        graph.hnsw.efSearch = int(params.get("ef_search", 64))
        return graph
    if kind == "ivfpq":
        nlist = int(params.get("nlist") or _ivf_lists(n_hint))
        rotate = bool(params.get("opq", n_hint >= OPQ_MIN))
        sub = int(params.get("m") or (OPQ_SUBQUANTIZERS if rotate else 64))
        if dim % sub:
            raise WatchlistError(f"ivfpq: m={sub} sub-quantizers must divide the dimension {dim}")
        codes = f"IVF{nlist},PQ{sub}x{PQ_BITS}fs"
        index = faiss.index_factory(dim, f"OPQ{sub}_{dim},{codes}" if rotate else codes)
        faiss.extract_index_ivf(index).nprobe = int(params.get("nprobe") or default_probes(nlist))
        return index
    raise WatchlistError(f"unknown index kind {kind!r}: expected one of {', '.join(KINDS)}")


class _ReadWriteLock:
    """Many concurrent searches, or one writer (sync, save) at a time; writers are not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _grow(array: np.ndarray, needed: int, fill: int) -> np.ndarray:
    """``array`` with room for ``needed`` entries (doubling, so appends cost O(1) amortised)."""
    if len(array) >= needed:
        return array
    grown = np.full(max(needed, 2 * len(array), 1024), fill, array.dtype)
    grown[: len(array)] = array
    return grown


class WatchlistIndex:
    """Templates of the store in a FAISS index, with template -> identity mapping.

    State is owned by this object and changed only under its write lock (``add``, ``remove``,
    ``sync``, the compaction's swap); searches hold the read lock.
    """

    def __init__(self, kind: str = "auto", model_version: str | None = None, **params: Any) -> None:
        if kind not in KINDS:
            raise WatchlistError(f"unknown index kind {kind!r}: expected one of {', '.join(KINDS)}")
        self.kind = kind
        self.effective_kind = "exact"
        self.model_version = model_version
        self.params = params
        self.version = 0
        self.path: Path | None = None
        self.compactions = 0  # finished compactions (rebuilds), for tests and metrics
        # FAISS threads per search (watchlist.search_threads); None: OpenMP's default, one per core.
        self.search_threads: int | None = None
        self._lock = _ReadWriteLock()
        self._sync_lock = threading.Lock()  # one sync at a time; searches go on meanwhile
        self._compactor: threading.Thread | None = None
        self._compactor_lock = threading.Lock()  # one compaction at a time, whichever thread asks
        self._index: faiss.Index = make_faiss_index("exact")  # what is searched
        self._ivf: faiss.Index | None = None  # ivfpq: the inverted lists inside _index
        self._trained_for = 0  # ivfpq: the templates its lists and rotation were chosen for
        self._storage: faiss.IndexFlat = self._index  # the exact vectors, row = slot
        self._slots = 0  # slots used (live and dead)
        self._dead = 0
        self._slot_tid = np.zeros(0, np.int64)  # template id of each slot, ascending (dead ones kept)
        self._slot_code = np.zeros(0, np.int32)  # identity code of each slot; -1: dead
        self._live_bits = np.zeros(0, np.uint8)  # bit per slot (little-endian bit order): live
        self._identities: list[str] = []  # code -> identity id
        self._code_of: dict[str, int] = {}
        self._templates_of = np.zeros(0, np.int64)  # live templates per identity code
        self._live_identities = 0
        self._identity_cache: np.ndarray | None = None

    def __len__(self) -> int:
        return self._slots - self._dead

    def identity_count(self) -> int:
        """Identities with at least one template in the index (the N of a 1:N search)."""
        return self._live_identities

    def search_settings(self) -> dict[str, Any]:
        """The FAISS settings searches use now (for benchmarks and logs)."""
        if self._ivf is not None:
            ivf = faiss.extract_index_ivf(self._ivf)
            return {"nlist": ivf.nlist, "nprobe": ivf.nprobe, "opq": _rotated(self._ivf), "refine": self._refine()}
        if self.effective_kind == "hnsw":
            return {"m": self._index.hnsw.nb_neighbors(1), "ef_search": self._index.hnsw.efSearch}
        return {}

    def memory_bytes(self) -> int:
        """Bytes the index holds: the FAISS index as it serialises, plus the slot and identity tables."""
        with self._lock.read():
            tables = self._slot_tid.nbytes + self._slot_code.nbytes + self._live_bits.nbytes
            tables += self._templates_of.nbytes + sum(len(i) + 49 for i in self._identities)
            return int(faiss.serialize_index(self._index).nbytes) + tables

    @property
    def dead_fraction(self) -> float:
        """Share of slots whose template was removed and not yet compacted away."""
        return self._dead / self._slots if self._slots else 0.0

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        store: WatchlistStore,
        kind: str = "auto",
        model_version: str | None = None,
        progress: bool = True,
        **params: Any,
    ) -> WatchlistIndex:
        """A fresh index of every template in the store (``params``: see ``make_faiss_index``)."""
        version, tids, iids, embeddings = store.snapshot()
        index = cls.from_arrays(tids, iids, embeddings, kind, model_version, progress, **params)
        index.version = version
        return index

    @classmethod
    def from_arrays(
        cls,
        template_ids: np.ndarray,
        identity_ids: list[str],
        embeddings: np.ndarray,
        kind: str = "auto",
        model_version: str | None = None,
        progress: bool = False,
        **params: Any,
    ) -> WatchlistIndex:
        """A fresh index of the given templates (no store: `bench index` builds it this way)."""
        index = cls(kind, model_version, **params)
        tids = np.asarray(template_ids, np.int64)
        embeddings = np.asarray(embeddings, np.float32).reshape(-1, EMBEDDING_SIZE)
        order = np.argsort(tids, kind="stable")
        if (order != np.arange(len(order))).any():
            tids, embeddings = tids[order], embeddings[order]
            identity_ids = [identity_ids[i] for i in order]
        with index._lock.write():
            index._reset(embeddings, progress)
            index._add(tids, list(identity_ids), embeddings, progress)
        return index

    def _choose_kind(self, templates: int) -> str:
        return auto_kind(templates) if self.kind == "auto" else self.kind

    def _reset(
        self, sample: np.ndarray, progress: bool = False, trained: faiss.Index | None = None, trained_for: int = 0
    ) -> None:
        """An empty index of this kind, trained on ``sample`` if it needs training (or a copy of ``trained``,
        trained for ``trained_for`` templates)."""
        kind = self._choose_kind(len(sample))
        self._ivf = None
        self._trained_for = 0
        if kind == "ivfpq" and trained is not None:
            ivf = faiss.clone_index(trained)
            ivf.reset()
            self._ivf = ivf
            self._trained_for = trained_for or len(sample)
        elif kind == "ivfpq":
            trial = make_faiss_index("ivfpq", EMBEDDING_SIZE, len(sample), **self.params)
            needed = ivfpq_min_templates(faiss.extract_index_ivf(trial).nlist)
            if len(sample) < needed:
                log.info(
                    "watchlist index: %d templates are too few to train ivfpq (needs %d); using exact search",
                    len(sample),
                    needed,
                )
                kind = "exact"
            else:
                self._trained_for = len(sample)
                if len(sample) > IVF_TRAIN_MAX:  # k-means on a random subset: as good, much faster
                    rows = np.random.default_rng(0).choice(len(sample), IVF_TRAIN_MAX, replace=False)
                    sample = sample[np.sort(rows)]
                log.info(
                    "watchlist index: training ivfpq on %d templates%s",
                    len(sample),
                    " (with an OPQ rotation: about a minute)" if _rotated(trial) else "",
                )
                trial.train(np.ascontiguousarray(sample, np.float32))
                self._ivf = trial
        if self._ivf is not None:
            self._storage = faiss.IndexFlatL2(EMBEDDING_SIZE)
            self._index = faiss.IndexRefine(self._ivf, self._storage)
        else:
            self._index = make_faiss_index(kind, EMBEDDING_SIZE, len(sample), **self.params)
            self._storage = self._index if kind == "exact" else faiss.downcast_index(self._index.storage)
        self.effective_kind = kind
        self._slots = self._dead = 0
        self._slot_tid = np.zeros(0, np.int64)
        self._slot_code = np.zeros(0, np.int32)
        self._live_bits = np.zeros(0, np.uint8)
        self._identities, self._code_of = [], {}
        self._templates_of = np.zeros(0, np.int64)
        self._live_identities = 0
        self._identity_cache = None

    def _add(self, tids: np.ndarray, iids: list[str], embeddings: np.ndarray, progress: bool = False) -> None:
        """Append templates in new slots; ``tids`` ascending and above every template id already here."""
        if not len(tids):
            return
        tids = np.asarray(tids, np.int64)
        embeddings = np.ascontiguousarray(embeddings, np.float32)
        first = self._slots
        slots = np.arange(first, first + len(tids), dtype=np.int64)
        with progress_bar(
            total=len(tids),
            desc="indexing templates",
            unit="template",
            enabled=progress and len(tids) >= PROGRESS_ABOVE,
        ) as bar:
            for start in range(0, len(tids), ADD_CHUNK):
                end = start + ADD_CHUNK
                if self._ivf is not None:
                    self._ivf.add_with_ids(embeddings[start:end], slots[start:end])
                    self._storage.add(embeddings[start:end])
                else:
                    self._index.add(embeddings[start:end])
                bar.update(len(tids[start:end]))
        if self._ivf is not None:
            self._index.ntotal = self._storage.ntotal  # IndexRefine checks candidates against it
        codes = np.fromiter((self._code(identity_id) for identity_id in iids), np.int32, len(iids))
        end = first + len(tids)
        self._slot_tid = _grow(self._slot_tid, end, -1)
        self._slot_code = _grow(self._slot_code, end, -1)
        self._slot_tid[first:end] = tids
        self._slot_code[first:end] = codes
        self._live_bits = _grow(self._live_bits, (end + 7) // 8, 0)
        bits = np.zeros((end + 7) // 8 * 8 - first // 8 * 8, bool)
        bits[first % 8 : first % 8 + len(tids)] = True
        self._live_bits[first // 8 : (end + 7) // 8] |= np.packbits(bits, bitorder="little")
        self._slots = end
        self._templates_of = _grow(self._templates_of, len(self._identities), 0)
        before = self._templates_of[: len(self._identities)] > 0
        np.add.at(self._templates_of, codes, 1)
        self._live_identities += int((self._templates_of[: len(self._identities)] > 0).sum() - before.sum())

    def _code(self, identity_id: str) -> int:
        code = self._code_of.get(identity_id)
        if code is None:
            code = self._code_of[identity_id] = len(self._identities)
            self._identities.append(identity_id)
        return code

    def _identity_array(self) -> np.ndarray:
        """Code -> identity id as an object array with a trailing None, rebuilt only when codes were added."""
        cached = self._identity_cache
        if cached is None or len(cached) != len(self._identities) + 1:
            cached = self._identity_cache = np.array([*self._identities, None], dtype=object)
        return cached

    def _slots_of(self, tids: np.ndarray) -> np.ndarray:
        """Live slots holding these template ids (ids not in the index are skipped)."""
        if not self._slots or not len(tids):
            return np.zeros(0, np.int64)
        known = self._slot_tid[: self._slots]
        position = np.clip(np.searchsorted(known, tids), 0, self._slots - 1)
        hit = (known[position] == tids) & (self._slot_code[position] >= 0)
        return np.unique(position[hit]).astype(np.int64)

    def _vectors(self, slots: np.ndarray | None = None) -> np.ndarray:
        """A writable view of the exact vectors (all slots), or a copy of the rows of ``slots``."""
        rows = faiss.rev_swig_ptr(self._storage.get_xb(), self._storage.ntotal * EMBEDDING_SIZE)
        rows = rows.reshape(-1, EMBEDDING_SIZE)
        return rows if slots is None else rows[slots]

    def _remove(self, tids: np.ndarray) -> int:
        """Zero and mark dead the templates' slots: work in proportion to the removed, not to the index."""
        slots = self._slots_of(np.asarray(tids, np.int64))
        if not len(slots):
            return 0
        if self._ivf is not None:
            self._ivf.remove_ids(faiss.IDSelectorBatch(slots))
        self._vectors()[slots] = 0.0  # the biometric vector itself is gone, not only unreachable
        codes = self._slot_code[slots]
        self._slot_code[slots] = -1
        np.bitwise_and.at(self._live_bits, slots // 8, ~(1 << (slots % 8)).astype(np.uint8))
        np.subtract.at(self._templates_of, codes, 1)
        self._live_identities -= int(np.count_nonzero(self._templates_of[np.unique(codes)] == 0))
        self._dead += len(slots)
        return len(slots)

    def add(self, template_ids: np.ndarray, identity_ids: list[str], embeddings: np.ndarray) -> None:
        """Add templates (ids unique and not yet in the index)."""
        embeddings = np.asarray(embeddings, np.float32).reshape(-1, EMBEDDING_SIZE)
        tids = np.asarray(template_ids, np.int64)
        if len(tids) != len(identity_ids) or len(tids) != len(embeddings):
            raise WatchlistError("index add: one template id and one identity id per embedding")
        with self._lock.write():
            if len(np.unique(tids)) != len(tids) or len(self._slots_of(tids)):
                raise WatchlistError("index add: a template id is already in the index")
            self._add_any(tids, list(identity_ids), embeddings)
        self._maybe_compact()

    def _add_any(self, tids: np.ndarray, iids: list[str], embeddings: np.ndarray) -> None:
        """``_add`` for ids in any order: ids below the newest slot's (never from the store) rebuild in order."""
        order = np.argsort(tids, kind="stable")
        tids, embeddings, iids = tids[order], embeddings[order], [iids[i] for i in order]
        if self._slots and len(tids) and tids[0] <= self._slot_tid[self._slots - 1]:
            live = np.flatnonzero(self._slot_code[: self._slots] >= 0)
            all_tids = np.concatenate([self._slot_tid[live], tids])
            all_iids = [self._identities[c] for c in self._slot_code[live]] + iids
            all_vectors = np.concatenate([self._vectors(live), embeddings])
            order = np.argsort(all_tids, kind="stable")
            self._reset(all_vectors)
            self._add(all_tids[order], [all_iids[i] for i in order], all_vectors[order])
            self.compactions += 1
            return
        self._add(tids, iids, embeddings)

    def remove(self, template_ids: np.ndarray) -> int:
        """Remove templates by id; returns how many were in the index."""
        with self._lock.write():
            removed = self._remove(np.asarray(template_ids, np.int64))
        self._maybe_compact()
        return removed

    def sync(self, store: WatchlistStore) -> int:
        """Apply the store's changes since this index's version; returns how many changes were applied."""
        with self._sync_lock:
            applied = self._sync(store)
        self._maybe_compact()
        return applied

    def _sync(self, store: WatchlistStore) -> int:
        changes = store.changes_since(self.version)
        if not changes:
            return 0
        added: set[int] = set()
        removed: set[int] = set()
        for change in changes:
            if change.op == "add_templates":
                added.update(change.template_ids)
            elif change.op in ("remove_identity", "remove_templates"):
                removed.update(change.template_ids)
        # Template ids are never reused, so order does not matter: an id added then removed stays out.
        wanted = sorted(added - removed)
        tids, iids, embeddings = store.all_templates(wanted) if wanted else (np.zeros(0, np.int64), [], None)
        with self._lock.write():
            erased = self._remove(np.array(sorted(removed), np.int64)) if removed else 0
            present = np.zeros(len(tids), bool)
            if len(tids) and self._slots:
                known = self._slot_tid[: self._slots]
                position = np.clip(np.searchsorted(known, tids), 0, self._slots - 1)
                present = known[position] == tids
            fresh = ~present
            if fresh.any() and embeddings is not None:
                self._add_any(tids[fresh], [i for i, f in zip(iids, fresh, strict=True) if f], embeddings[fresh])
            self.version = max(change.version for change in changes)
        if erased and self.path is not None:
            self.save(self.path)
        return len(changes)

    # -- compaction ---------------------------------------------------------------------------

    def _needs_rebuild(self) -> bool:
        if self._dead and self._dead >= COMPACT_DEAD_FRACTION * self._slots:
            return True
        if self._grown():
            return True
        # auto (or ivfpq that was too small to train) outgrew exact search
        return self.kind in ("auto", "ivfpq") and self.effective_kind == "exact" and len(self) >= 2 * AUTO_IVFPQ_MIN

    def _grown(self) -> bool:
        """Whether ivfpq has grown past what it was trained for (its lists too few and too long)."""
        return self._ivf is not None and len(self) >= RETRAIN_GROWTH * max(self._trained_for, 1)

    def _maybe_compact(self) -> None:
        """Rebuild from the live templates when dead slots or growth call for it: inline when small."""
        with self._compactor_lock:
            if not self._needs_rebuild() or (self._compactor is not None and self._compactor.is_alive()):
                return
            if self._slots <= COMPACT_INLINE_MAX:
                self.compact()
                return
            log.info("watchlist index: compacting %d slots (%d dead) in the background", self._slots, self._dead)
            self._compactor = threading.Thread(target=self.compact, name="watchlist-index-compact", daemon=True)
            self._compactor.start()

    def wait_compaction(self, timeout: float | None = None) -> None:
        """Wait for a background compaction to finish (tests, shutdown)."""
        compactor = self._compactor
        if compactor is not None:
            compactor.join(timeout)

    def compact(self) -> None:
        """Rebuild the index from its live templates (the slow part without the write lock), then swap it in."""
        with self._lock.read():
            snapshot = self._slots
            live = np.flatnonzero(self._slot_code[:snapshot] >= 0)
            tids = self._slot_tid[live].copy()
            iids = [self._identities[c] for c in self._slot_code[live]]
            vectors = self._vectors(live)
            retrain = self._grown()
            trained = self._ivf if self._choose_kind(len(live)) == "ivfpq" and not retrain else None
            trained = faiss.clone_index(trained) if trained is not None else None
            trained_for = self._trained_for
            generation = self.compactions
        fresh = WatchlistIndex(self.kind, self.model_version, **self.params)
        if retrain:
            log.info("watchlist index: %d templates, trained for %d: retraining", len(live), trained_for)
        fresh._reset(vectors, trained=trained, trained_for=trained_for)
        fresh._add(tids, iids, vectors)
        del vectors
        with self._lock.write():
            if generation != self.compactions:  # an out-of-order add rebuilt the index meanwhile
                return
            # Removed and added while the new index was built: apply them to it before the swap.
            gone = self._slot_code[live] < 0
            if gone.any():
                fresh._remove(tids[gone])
            later = np.arange(snapshot, self._slots)
            later = later[self._slot_code[later] >= 0]
            if len(later):
                fresh._add(
                    self._slot_tid[later], [self._identities[c] for c in self._slot_code[later]], self._vectors(later)
                )
            for name in (
                "effective_kind",
                "_index",
                "_ivf",
                "_trained_for",
                "_storage",
                "_slots",
                "_dead",
                "_slot_tid",
                "_slot_code",
                "_live_bits",
                "_identities",
                "_code_of",
                "_templates_of",
                "_live_identities",
                "_identity_cache",
            ):
                setattr(self, name, getattr(fresh, name))
            self.compactions += 1
        log.info("watchlist index: compacted to %d templates (%s)", len(self), self.effective_kind)

    # -- searching ----------------------------------------------------------------------------

    def _refine(self) -> int:
        """Candidates re-ranked per face (ivfpq)."""
        if self.params.get("refine"):
            return int(self.params["refine"])
        return REFINE_ROTATED if _rotated(self._ivf) else REFINE

    def _search_params(self, k: int) -> faiss.SearchParameters | None:
        """Per-call FAISS parameters: the live-slot filter (exact, hnsw) and the re-ranking width (ivfpq)."""
        if self._ivf is not None:
            params = faiss.IndexRefineSearchParameters()
            # The approximate top ``refine`` hold the exact top k with high probability (k is small: top_k).
            params.k_factor = max(self._refine(), 4 * k) / k
            return params
        if not self._dead:
            return None
        selector = faiss.IDSelectorBitmap(self._slots, faiss.swig_ptr(self._live_bits))
        if self.effective_kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = self._index.hnsw.efSearch
        else:
            params = faiss.SearchParameters()
        params.sel = selector
        params._selector = selector  # keeps the selector alive as long as the parameters
        return params

    def search(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest ``k`` templates of each embedding: (Euclidean distances (N, k) float32,
        template ids (N, k) int64, identity ids (N, k) object), nearest first.

        Missing neighbours (fewer than k templates) have distance inf, template id -1, identity None.
        """
        queries = np.ascontiguousarray(np.asarray(embeddings, np.float32).reshape(-1, EMBEDDING_SIZE))
        n = len(queries)
        k = max(1, int(k))
        if self.search_threads:
            # OpenMP keeps the thread count per calling thread, so it is set by the thread that searches.
            faiss.omp_set_num_threads(self.search_threads)
        with self._lock.read():
            total = len(self)
            distances = np.full((n, k), np.inf, np.float32)
            labels = np.full((n, k), -1, np.int64)
            identities = np.full((n, k), None, dtype=object)
            if n == 0 or total == 0:
                return distances, labels, identities
            width = min(k, total)
            found_d, slots = self._index.search(queries, width, params=self._search_params(width))
            valid = (slots >= 0) & (slots < self._slots)
            safe = np.where(valid, slots, 0)
            codes = np.where(valid, self._slot_code[safe], -1)
            valid &= codes >= 0
            labels[:, :width] = np.where(valid, self._slot_tid[safe], -1)
            distances[:, :width] = np.where(valid, np.sqrt(np.maximum(found_d, 0.0)), np.inf)
            identities[:, :width] = self._identity_array()[codes]  # code -1 picks the trailing None
        return distances, labels, identities

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the index atomically (temporary file, then rename over ``path``); removed vectors are zeros."""
        path = Path(path)
        with self._lock.read():
            codes = self._slot_code[: self._slots]
            used = np.unique(codes[codes >= 0])
            remap = np.full(len(self._identities) + 1, -1, np.int32)  # the last entry maps dead (-1) to -1
            remap[used] = np.arange(len(used), dtype=np.int32)
            meta = {
                "format_version": INDEX_FORMAT_VERSION,
                "version": self.version,
                "kind": self.kind,
                "effective_kind": self.effective_kind,
                "model_version": self.model_version,
                "params": self.params,
                "trained_for": self._trained_for,
            }
            arrays = {
                "faiss": faiss.serialize_index(self._index),
                "template_ids": self._slot_tid[: self._slots].copy(),
                "codes": remap[codes],
                "identities": np.array([self._identities[c] for c in used], dtype=str),
                "meta": np.array(json.dumps(meta)),
            }
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with private_file(temporary, "wb") as out:
                np.savez(out, **arrays)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        self.path = path

    @classmethod
    def load(cls, path: str | Path) -> WatchlistIndex:
        """An index saved by ``save``; WatchlistError if the file is missing or unreadable."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("format_version") != INDEX_FORMAT_VERSION:
                    raise WatchlistError(f"index file {path}: format version {meta.get('format_version')}")
                index = cls(meta["kind"], meta.get("model_version"), **meta.get("params", {}))
                loaded = faiss.deserialize_index(np.asarray(data["faiss"], np.uint8))
                tids = np.asarray(data["template_ids"], np.int64)
                codes = np.asarray(data["codes"], np.int32)
                identities = [str(i) for i in data["identities"]]
        except WatchlistError:
            raise
        except Exception as exc:  # numpy, zipfile and faiss raise many kinds; all mean "rebuild it"
            raise WatchlistError(f"index file {path} cannot be loaded: {exc}") from exc
        kind = meta.get("effective_kind")
        index._index = loaded
        if kind == "ivfpq" and isinstance(loaded, faiss.IndexRefine):
            index._ivf = faiss.downcast_index(loaded.base_index)
            index._trained_for = int(meta.get("trained_for") or len(tids))
            index._storage = faiss.downcast_index(loaded.refine_index)
        elif kind == "hnsw" and isinstance(loaded, faiss.IndexHNSW):
            index._storage = faiss.downcast_index(loaded.storage)
        elif kind == "exact" and isinstance(loaded, faiss.IndexFlat):
            index._storage = loaded
        else:
            raise WatchlistError(f"index file {path} is inconsistent (kind {kind!r}, {type(loaded).__name__})")
        if index._storage.ntotal != len(tids) or len(codes) != len(tids) or (np.diff(tids) <= 0).any():
            raise WatchlistError(
                f"index file {path} is inconsistent ({index._storage.ntotal} vectors, {len(tids)} ids)"
            )
        if len(codes) and codes.max(initial=-1) >= len(identities):
            raise WatchlistError(f"index file {path} is inconsistent (identity codes out of range)")
        index.effective_kind = kind
        index._identities = identities
        index._code_of = {identity: code for code, identity in enumerate(identities)}
        index._slots = len(tids)
        index._slot_tid = tids.copy()
        index._slot_code = codes.copy()
        live = codes >= 0
        index._dead = int((~live).sum())
        index._live_bits = np.packbits(live, bitorder="little")
        index._templates_of = np.bincount(codes[live], minlength=len(identities)).astype(np.int64)
        index._live_identities = int(np.count_nonzero(index._templates_of))
        index.version = int(meta["version"])
        index.path = path
        return index

    @classmethod
    def load_or_rebuild(
        cls,
        store: WatchlistStore,
        path: str | Path | None,
        kind: str = "auto",
        model_version: str | None = None,
        progress: bool = True,
    ) -> WatchlistIndex:
        """The saved index at ``path`` if it reflects the store (same version, model, kind), else a rebuild.

        A saved index of the same kind and model but an older version catches up by replaying the
        store's change log (and is saved again). A rebuilt index is saved to ``path`` (a failure to
        save is logged, not fatal).
        """
        stored_model = store.model_version
        if model_version and stored_model and stored_model != model_version:
            raise WatchlistError(
                f"watchlist store {store.path} holds templates of model {stored_model!r} but the embedder is "
                f"{model_version!r}: re-enroll the identities with this model"
            )
        if path is not None and Path(path).is_file():
            try:
                saved = cls.load(path)
            except WatchlistError as exc:
                log.warning("%s; rebuilding it", exc)
            else:
                current = store.version
                same = saved.kind == kind and saved.model_version == model_version
                if same and saved.version == current:
                    log.info("watchlist index loaded from %s (version %d)", path, current)
                    return saved
                if same and saved.version < current:
                    # The change log is complete, so replaying it is exact and much cheaper than a rebuild.
                    saved.sync(store)
                    saved.save(path)
                    log.info("watchlist index %s caught up to version %d", path, saved.version)
                    return saved
                log.info(
                    "watchlist index %s does not fit (version %d kind %s model %s; store version %d): rebuilding",
                    path,
                    saved.version,
                    saved.kind,
                    saved.model_version,
                    current,
                )
        index = cls.build(store, kind, model_version, progress=progress)
        if path is not None:
            try:
                index.save(path)
            except OSError as exc:
                log.warning("watchlist index not saved to %s: %s", path, exc)
        return index
