"""The FAISS index over the watchlist's templates: batched nearest-template search.

Kinds (``watchlist.index_kind``):

- ``exact``: brute-force L2 over every template (IndexFlatL2 with ids); exact, fine to ~100k.
- ``hnsw``: graph search (IndexHNSWFlat); fast on large lists, approximate. HNSW cannot delete,
  so a removal rebuilds the graph from the remaining vectors (erasure must not leave vectors behind).
- ``ivfpq``: inverted lists of 4-bit product-quantised codes scanned with SIMD (fast scan), the
  best ``refine`` (64) candidates per face re-ranked with the exact vectors, so the distances the
  thresholds see are exact; for very large lists (docs/benchmarks-index.md: 1M templates, a batch
  of 32 faces in under 10 ms at recall@1 0.99). Needs training; with too few templates it falls
  back to ``exact``.

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

KINDS = ("exact", "hnsw", "ivfpq")
INDEX_FORMAT_VERSION = 2  # 2: ivfpq files carry the exact vectors for re-ranking
PROGRESS_ABOVE = 50_000  # templates; smaller rebuilds take well under a second
ADD_CHUNK = 10_000
PQ_BITS = 4  # fast-scan codes
IVF_TRAIN_MAX = 200_000


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


def _ivf_lists(n_hint: int) -> int:
    # ~2 sqrt(n) lists (2048 at 1M: the measured optimum), never more than 39 training points each allow.
    return int(min(4096, max(16, min(2 * math.sqrt(max(n_hint, 1)), n_hint // 39))))


def make_faiss_index(kind: str, dim: int = EMBEDDING_SIZE, n_hint: int = 0, **params: Any) -> faiss.Index:
    """A new, empty FAISS index of ``kind`` that takes ``add_with_ids`` and returns squared L2 distances.

    ``ivfpq`` comes untrained (train it on representative vectors before adding). Parameters:
    hnsw: ``m`` (32), ``ef_construction`` (80), ``ef_search`` (64); ivfpq: ``nlist`` (from n_hint),
    ``m`` (64 sub-quantizers of 4 bits), ``nprobe`` (224), ``refine`` (64 candidates re-ranked per result).
    """
    if kind == "exact":
        return faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
    if kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, int(params.get("m", 32)))
        graph.hnsw.efConstruction = int(params.get("ef_construction", 80))
        graph.hnsw.efSearch = int(params.get("ef_search", 64))
        return faiss.IndexIDMap2(graph)
    if kind == "ivfpq":
        nlist = int(params.get("nlist") or _ivf_lists(n_hint))
        sub = int(params.get("m", 64))
        if dim % sub:
            raise WatchlistError(f"ivfpq: m={sub} sub-quantizers must divide the dimension {dim}")
        index = faiss.index_factory(dim, f"IVF{nlist},PQ{sub}x{PQ_BITS}fs")
        index.nprobe = int(params.get("nprobe", min(nlist, 224)))
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


class WatchlistIndex:
    """Templates of the store in a FAISS index, with template -> identity mapping."""

    def __init__(self, kind: str = "exact", model_version: str | None = None, **params: Any) -> None:
        if kind not in KINDS:
            raise WatchlistError(f"unknown index kind {kind!r}: expected one of {', '.join(KINDS)}")
        self.kind = kind
        self.effective_kind = kind
        self.model_version = model_version
        self.params = params
        self.version = 0
        self.path: Path | None = None
        self._lock = _ReadWriteLock()
        self._sync_lock = threading.Lock()  # one sync at a time; searches go on meanwhile
        self._index: faiss.Index = make_faiss_index("exact")
        self._tids = np.zeros(0, np.int64)  # sorted template ids
        self._codes = np.zeros(0, np.int32)  # identity code of each template, aligned with _tids
        self._vectors: np.ndarray | None = None  # ivfpq only: exact vectors aligned with _tids, for re-ranking
        self._identities: list[str] = []  # code -> identity id
        self._code_of: dict[str, int] = {}
        self._identity_cache: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._tids)

    def identity_count(self) -> int:
        """Identities with at least one template in the index (the N of a 1:N search)."""
        with self._lock.read():
            return int(np.unique(self._codes).size)

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        store: WatchlistStore,
        kind: str = "exact",
        model_version: str | None = None,
        progress: bool = True,
        **params: Any,
    ) -> WatchlistIndex:
        """A fresh index of every template in the store (``params``: see ``make_faiss_index``)."""
        index = cls(kind, model_version, **params)
        version, tids, iids, embeddings = store.snapshot()
        with index._lock.write():
            index._reset(embeddings, progress)
            index._add(tids, iids, embeddings, progress)
            index.version = version
        return index

    def _reset(self, sample: np.ndarray, progress: bool = False) -> None:
        """An empty FAISS index of this kind, trained on ``sample`` if it needs training."""
        kind = self.kind
        if kind == "ivfpq":
            trial = make_faiss_index("ivfpq", EMBEDDING_SIZE, len(sample), **self.params)
            needed = ivfpq_min_templates(trial.nlist)
            if len(sample) < needed:
                log.info(
                    "watchlist index: %d templates are too few to train ivfpq (needs %d); using exact search",
                    len(sample),
                    needed,
                )
                kind = "exact"
            else:
                if len(sample) > IVF_TRAIN_MAX:  # k-means on a random subset: as good, much faster
                    rows = np.random.default_rng(0).choice(len(sample), IVF_TRAIN_MAX, replace=False)
                    sample = sample[np.sort(rows)]
                log.info("watchlist index: training ivfpq on %d templates", len(sample))
                trial.train(np.ascontiguousarray(sample, np.float32))
                self._index = trial
        if kind != "ivfpq":
            self._index = make_faiss_index(kind, EMBEDDING_SIZE, len(sample), **self.params)
        self.effective_kind = kind
        self._tids = np.zeros(0, np.int64)
        self._codes = np.zeros(0, np.int32)
        self._vectors = np.zeros((0, EMBEDDING_SIZE), np.float32) if kind == "ivfpq" else None
        self._identities, self._code_of = [], {}
        self._identity_cache = None

    def _add(self, tids: np.ndarray, iids: list[str], embeddings: np.ndarray, progress: bool = False) -> None:
        if not len(tids):
            return
        tids = np.asarray(tids, np.int64)
        embeddings = np.ascontiguousarray(embeddings, np.float32)
        with progress_bar(
            total=len(tids),
            desc="indexing templates",
            unit="template",
            enabled=progress and len(tids) >= PROGRESS_ABOVE,
        ) as bar:
            for start in range(0, len(tids), ADD_CHUNK):
                end = start + ADD_CHUNK
                self._index.add_with_ids(embeddings[start:end], tids[start:end])
                bar.update(len(tids[start:end]))
        codes = np.array([self._code(identity_id) for identity_id in iids], np.int32)
        all_tids = np.concatenate([self._tids, tids])
        all_codes = np.concatenate([self._codes, codes])
        order = np.argsort(all_tids, kind="stable")
        self._tids, self._codes = all_tids[order], all_codes[order]
        if self._vectors is not None:
            self._vectors = np.concatenate([self._vectors, embeddings])[order]

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

    def _remove(self, tids: np.ndarray) -> int:
        tids = np.asarray(tids, np.int64)
        present = np.isin(self._tids, tids)
        if not present.any():
            return 0
        gone = self._tids[present]
        if self.effective_kind == "hnsw":
            # HNSW cannot delete: rebuild the graph from the vectors that stay.
            kept_ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            vectors = self._index.index.reconstruct_n(0, self._index.ntotal)
            keep = ~np.isin(kept_ids, gone)
            self._index = make_faiss_index("hnsw", EMBEDDING_SIZE, int(keep.sum()), **self.params)
            if keep.any():
                self._index.add_with_ids(np.ascontiguousarray(vectors[keep]), kept_ids[keep])
        else:
            self._index.remove_ids(gone)
        self._tids, self._codes = self._tids[~present], self._codes[~present]
        if self._vectors is not None:
            self._vectors = self._vectors[~present]
        return len(gone)

    def add(self, template_ids: np.ndarray, identity_ids: list[str], embeddings: np.ndarray) -> None:
        """Add templates (ids unique and not yet in the index)."""
        embeddings = np.asarray(embeddings, np.float32).reshape(-1, EMBEDDING_SIZE)
        if len(template_ids) != len(identity_ids) or len(template_ids) != len(embeddings):
            raise WatchlistError("index add: one template id and one identity id per embedding")
        with self._lock.write():
            if np.isin(np.asarray(template_ids, np.int64), self._tids).any():
                raise WatchlistError("index add: a template id is already in the index")
            self._add(np.asarray(template_ids, np.int64), list(identity_ids), embeddings)

    def remove(self, template_ids: np.ndarray) -> int:
        """Remove templates by id; returns how many were in the index."""
        with self._lock.write():
            return self._remove(np.asarray(template_ids, np.int64))

    def sync(self, store: WatchlistStore) -> int:
        """Apply the store's changes since this index's version; returns how many changes were applied."""
        with self._sync_lock:
            return self._sync(store)

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
            fresh = ~np.isin(tids, self._tids)
            if fresh.any() and embeddings is not None:
                self._add(tids[fresh], [i for i, f in zip(iids, fresh, strict=True) if f], embeddings[fresh])
            self.version = max(change.version for change in changes)
        if erased and self.path is not None:
            self.save(self.path)
        return len(changes)

    # -- searching ----------------------------------------------------------------------------

    def search(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest ``k`` templates of each embedding: (Euclidean distances (N, k) float32,
        template ids (N, k) int64, identity ids (N, k) object), nearest first.

        Missing neighbours (fewer than k templates) have distance inf, template id -1, identity None.
        """
        queries = np.ascontiguousarray(np.asarray(embeddings, np.float32).reshape(-1, EMBEDDING_SIZE))
        n = len(queries)
        k = max(1, int(k))
        with self._lock.read():
            total = len(self._tids)
            distances = np.full((n, k), np.inf, np.float32)
            labels = np.full((n, k), -1, np.int64)
            identities = np.full((n, k), None, dtype=object)
            if n == 0 or total == 0:
                return distances, labels, identities
            if self._vectors is not None:
                found_d, found_i = self._refined_search(queries, min(k, total))
            else:
                found_d, found_i = self._index.search(queries, min(k, total))
            width = found_i.shape[1]
            labels[:, :width] = found_i
            valid = labels >= 0
            distances[:, :width] = np.sqrt(np.maximum(found_d, 0.0))
            distances[~valid] = np.inf
            position = np.clip(np.searchsorted(self._tids, labels), 0, total - 1)
            valid &= self._tids[position] == labels
            codes = np.where(valid, self._codes[position], -1)
            identities = self._identity_array()[codes]  # code -1 picks the trailing None
            labels[~valid] = -1
            distances[~valid] = np.inf
        return distances, labels, identities

    def _refined_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """ivfpq: approximate candidates, then exact squared distances to their vectors; the best k."""
        total = len(self._tids)
        # The approximate top ``refine`` hold the exact top k with high probability (k is small: top_k).
        wide = min(total, max(int(self.params.get("refine", 64)), 4 * k))
        _, candidates = self._index.search(queries, wide)
        position = np.clip(np.searchsorted(self._tids, candidates), 0, total - 1)
        valid = (candidates >= 0) & (self._tids[position] == candidates)
        assert self._vectors is not None
        differences = self._vectors[position] - queries[:, None, :]
        exact = np.einsum("nkd,nkd->nk", differences, differences)
        exact[~valid] = np.inf
        best = np.argsort(exact, axis=1, kind="stable")[:, :k]
        found_d = np.take_along_axis(exact, best, axis=1)
        found_i = np.where(np.isfinite(found_d), np.take_along_axis(candidates, best, axis=1), -1)
        return found_d, found_i

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the index atomically (temporary file, then rename over ``path``)."""
        path = Path(path)
        with self._lock.read():
            used = np.unique(self._codes)
            remap = np.full(len(self._identities) + 1, -1, np.int32)
            remap[used] = np.arange(len(used), dtype=np.int32)
            meta = {
                "format_version": INDEX_FORMAT_VERSION,
                "version": self.version,
                "kind": self.kind,
                "effective_kind": self.effective_kind,
                "model_version": self.model_version,
                "params": self.params,
            }
            arrays = {
                "faiss": faiss.serialize_index(self._index),
                "template_ids": self._tids,
                "codes": remap[self._codes],
                "identities": np.array([self._identities[c] for c in used], dtype=str),
                "meta": np.array(json.dumps(meta)),
            }
            if self._vectors is not None:
                arrays["vectors"] = self._vectors
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
                index._index = faiss.deserialize_index(np.asarray(data["faiss"], np.uint8))
                index._tids = np.asarray(data["template_ids"], np.int64)
                index._codes = np.asarray(data["codes"], np.int32)
                index._identities = [str(i) for i in data["identities"]]
                if meta.get("effective_kind") == "ivfpq":
                    index._vectors = np.asarray(data["vectors"], np.float32)
        except WatchlistError:
            raise
        except Exception as exc:  # numpy, zipfile and faiss raise many kinds; all mean "rebuild it"
            raise WatchlistError(f"index file {path} cannot be loaded: {exc}") from exc
        if index._vectors is not None and len(index._vectors) != len(index._tids):
            raise WatchlistError(f"index file {path} is inconsistent (vectors and ids differ in number)")
        if index._index.ntotal != len(index._tids):
            raise WatchlistError(
                f"index file {path} is inconsistent ({index._index.ntotal} vectors, {len(index._tids)} ids)"
            )
        index._code_of = {identity: code for code, identity in enumerate(index._identities)}
        index.effective_kind = meta.get("effective_kind", index.kind)
        index.version = int(meta["version"])
        index.path = path
        return index

    @classmethod
    def load_or_rebuild(
        cls,
        store: WatchlistStore,
        path: str | Path | None,
        kind: str = "exact",
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
