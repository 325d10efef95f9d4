"""Clustering faces into anonymous visitors: online over recent centroids, and a global offline pass.

Online (the worker): each visitor is the running mean of the embeddings of its tracks, held in a
FAISS L2 index (exact; a site sees thousands of visitors a day, not millions). A track joins the
nearest visitor within ``threshold``, else starts one. Two visitors that drift within
``merge_threshold`` of each other after an update are merged, the younger into the older, unless
they were seen at the same time (two faces at once are two people).

Offline (``facewatch visitors recluster``, ``facewatch eval cluster``): Chinese whispers, as
dlib's ``chinese_whispers_clustering`` does it, on the graph of pairs closer than the threshold.
The graph comes from one FAISS range search, and labels are propagated a random chunk of nodes at
a time with sparse matrix products, so no Python loop runs per face.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np
import scipy.sparse as sp

from worker.models.face_spec import EMBEDDING_SIZE

SEARCH_K = 8  # candidates looked at per track: the nearest may be excluded (seen at the same time)


@dataclass
class Centroid:
    """One visitor as the online clusterer sees it."""

    visitor_id: str
    total: np.ndarray  # sum of the track embeddings (weighted); the centroid is total / weight
    weight: float
    first_seen: float
    last_seen: float
    busy: list[tuple[str, float, float]] = field(default_factory=list)  # (camera, start, end) of recent tracks

    @property
    def centroid(self) -> np.ndarray:
        return (self.total / max(self.weight, 1e-9)).astype(np.float32)

    def overlaps(self, camera_id: str, start: float, end: float) -> bool:
        """Whether the visitor was on ``camera_id`` during [start, end] (then a new track there is someone else)."""
        return any(c == camera_id and s < end and start < e for c, s, e in self.busy)


@dataclass(frozen=True)
class Assignment:
    """Where a track went: its visitor (after merges), whether that visitor is new, and the ids merged into it.

    ``merged`` may hold the id the track first joined, when that visitor was itself merged away.
    """

    visitor_id: str
    new: bool
    distance: float | None
    merged: tuple[str, ...] = ()


class OnlineClusters:
    """Visitor centroids in a FAISS index; one caller at a time (the visitor stage owns it)."""

    def __init__(
        self,
        threshold: float,
        merge_threshold: float | None = None,
        new_id: Callable[[], str] | None = None,
        busy_window_s: float = 3600.0,
    ) -> None:
        self.threshold = threshold
        self.merge_threshold = threshold * 0.75 if merge_threshold is None else merge_threshold
        self.new_id = new_id or (lambda: uuid.uuid4().hex)
        self.busy_window_s = busy_window_s
        self._index = faiss.IndexIDMap2(faiss.IndexFlatL2(EMBEDDING_SIZE))
        self._by_key: dict[int, Centroid] = {}
        self._key_of: dict[str, int] = {}
        self._next_key = 1

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, visitor_id: str) -> bool:
        return visitor_id in self._key_of

    def get(self, visitor_id: str) -> Centroid | None:
        """The visitor's centroid record, or None."""
        key = self._key_of.get(visitor_id)
        return None if key is None else self._by_key[key]

    def visitors(self) -> list[Centroid]:
        """Every visitor held."""
        return list(self._by_key.values())

    def load(self, centroid: Centroid) -> None:
        """Add a visitor read from the store."""
        self._put(centroid)

    def _put(self, centroid: Centroid) -> None:
        key = self._key_of.get(centroid.visitor_id)
        if key is not None:
            self._index.remove_ids(np.array([key], dtype=np.int64))
        else:
            key = self._key_of[centroid.visitor_id] = self._next_key
            self._next_key += 1
        self._by_key[key] = centroid
        self._index.add_with_ids(centroid.centroid.reshape(1, -1), np.array([key], dtype=np.int64))

    def remove(self, visitor_id: str) -> bool:
        """Drop a visitor from the index (erasure, retention); False if it was not there."""
        key = self._key_of.pop(visitor_id, None)
        if key is None:
            return False
        self._index.remove_ids(np.array([key], dtype=np.int64))
        del self._by_key[key]
        return True

    def _candidates(self, vector: np.ndarray, radius: float) -> list[tuple[Centroid, float]]:
        if not self._by_key:
            return []
        distances, keys = self._index.search(vector.reshape(1, -1), min(SEARCH_K, len(self._by_key)))
        found = []
        for squared, key in zip(distances[0], keys[0], strict=True):
            distance = float(np.sqrt(max(squared, 0.0)))
            if key >= 0 and distance <= radius:
                found.append((self._by_key[int(key)], distance))
        return found

    def assign(
        self, embedding: np.ndarray, camera_id: str, start: float, end: float, weight: float = 1.0
    ) -> Assignment:
        """Put one track (its mean embedding, seen on ``camera_id`` from ``start`` to ``end``) into a visitor."""
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        chosen: Centroid | None = None
        distance: float | None = None
        for candidate, d in self._candidates(vector, self.threshold):
            if not candidate.overlaps(camera_id, start, end):
                chosen, distance = candidate, d
                break
        new = chosen is None
        if chosen is None:
            chosen = Centroid(self.new_id(), np.zeros(EMBEDDING_SIZE, np.float64), 0.0, start, end)
        chosen.total = chosen.total + weight * vector.astype(np.float64)
        chosen.weight += weight
        chosen.first_seen = min(chosen.first_seen, start)
        chosen.last_seen = max(chosen.last_seen, end)
        chosen.busy = [b for b in chosen.busy if b[2] > end - self.busy_window_s] + [(camera_id, start, end)]
        self._put(chosen)
        survivor, merged = self._merge(chosen)
        return Assignment(survivor.visitor_id, new and not merged, distance, tuple(merged))

    def _merge(self, kept: Centroid) -> tuple[Centroid, list[str]]:
        """Merge visitors within merge_threshold of ``kept`` (never two seen at once); the oldest id survives."""
        merged: list[str] = []
        for other, _ in self._candidates(kept.centroid, self.merge_threshold):
            if other.visitor_id == kept.visitor_id or any(other.overlaps(*b) for b in kept.busy):
                continue
            # The older id survives: it is the one reports and earlier events already know.
            survivor, absorbed = (kept, other) if kept.first_seen <= other.first_seen else (other, kept)
            survivor.total = survivor.total + absorbed.total
            survivor.weight += absorbed.weight
            survivor.first_seen = min(survivor.first_seen, absorbed.first_seen)
            survivor.last_seen = max(survivor.last_seen, absorbed.last_seen)
            survivor.busy = survivor.busy + absorbed.busy
            self.remove(absorbed.visitor_id)
            self._put(survivor)
            merged.append(absorbed.visitor_id)
            kept = survivor
        return kept, merged


def neighbour_graph(embeddings: np.ndarray, threshold: float) -> sp.csr_matrix:
    """Sparse symmetric adjacency of the pairs closer than ``threshold`` (L2), from one FAISS range search."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(x)
    if n == 0:
        return sp.csr_matrix((0, 0), dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    limits, _, ids = index.range_search(x, float(threshold) ** 2)
    rows = np.repeat(np.arange(n), np.diff(limits.astype(np.int64)))
    ids = ids.astype(np.int64)
    keep = rows != ids
    graph = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], ids[keep])), shape=(n, n))
    return graph.maximum(graph.T).tocsr()


def chinese_whispers(
    embeddings: np.ndarray, threshold: float, iterations: int = 20, chunks: int = 8, seed: int = 0
) -> np.ndarray:
    """Cluster labels 0..k-1 by Chinese whispers on the graph of pairs closer than ``threshold``.

    Each round visits the nodes in a random order, a chunk at a time; every node of a chunk takes
    the label most of its neighbours carry (ties: the smallest label). Chunks keep it close to
    dlib's one-node-at-a-time updates, which do not oscillate as fully synchronous ones can.
    """
    graph = neighbour_graph(embeddings, threshold)
    n = graph.shape[0]
    labels = np.arange(n)
    rng = np.random.default_rng(seed)
    has_neighbours = np.diff(graph.indptr) > 0
    for _ in range(iterations):
        changed = 0
        for chunk in np.array_split(rng.permutation(np.flatnonzero(has_neighbours)), chunks):
            if len(chunk) == 0:
                continue
            votes = graph[chunk] @ sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), labels)), shape=(n, n))
            best = np.asarray(votes.argmax(axis=1)).reshape(-1)
            changed += int((best != labels[chunk]).sum())
            labels[chunk] = best
        if changed == 0:
            break
    return np.unique(labels, return_inverse=True)[1]


def online_labels(
    embeddings: np.ndarray,
    threshold: float,
    merge_threshold: float | None = None,
    order: np.ndarray | None = None,
    spans: Sequence[tuple[str, float, float]] | None = None,
) -> np.ndarray:
    """Labels the online clusterer gives ``embeddings`` fed one at a time (in ``order``), each as its own track.

    ``spans``: each row's (camera, start, end), for tracks of a video (two seen at the same time on one
    camera are two people, as in the worker); by default every row is an image on a camera of its own."""
    clusters = OnlineClusters(threshold, merge_threshold)
    order = np.arange(len(embeddings)) if order is None else order
    owner: dict[str, str] = {}  # visitor id -> the id it was merged into
    first: list[str] = [""] * len(embeddings)
    for step, row in enumerate(order):
        # By default distinct cameras per face: images are not simultaneous sightings.
        camera, start, end = spans[row] if spans is not None else (f"image{row}", float(step), float(step))
        assignment = clusters.assign(embeddings[row], camera, start, end)
        for old in assignment.merged:
            owner[old] = assignment.visitor_id
        first[row] = assignment.visitor_id
    final = []
    for visitor in first:
        while visitor in owner:
            visitor = owner[visitor]
        final.append(visitor)
    return np.unique(np.array(final), return_inverse=True)[1]
