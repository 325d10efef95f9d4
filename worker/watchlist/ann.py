"""Approximate nearest-neighbour index recipes for large watchlists, measured by `facewatch bench index`.

A recipe is a FAISS factory string plus build-time and search-time parameters. The figures behind
the defaults (1M identities, 2-core CPU) are in docs/benchmarks-index.md.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from worker.errors import FacewatchError

# Build-time keys of a recipe; every other key except "factory" and "notes" is a search parameter
# understood by faiss.ParameterSpace (efSearch, nprobe, quantizer_efSearch, k_factor_rf, ...).
BUILD_KEYS = frozenset({"factory", "efConstruction", "train_size", "nlist", "lists_per_sqrt", "notes"})
# Training points per inverted list, at least. FAISS advises 39 (and warns below it); 12 still gives
# usable centroids and lets 200k training points (minutes of k-means on 2 cores) make 16384 lists.
MIN_POINTS_PER_LIST = 12

ANN_RECIPES: dict[str, dict[str, Any]] = {
    "exact": {
        "factory": "Flat",
        "notes": "brute force; the reference for recall",
    },
    "hnsw": {
        "factory": "PCA64,HNSW32,Flat,RFlat",
        "efConstruction": 80,
        "efSearch": 256,
        "k_factor_rf": 8,
        "notes": "graph search on 64 PCA dims (97% of the variance), top candidates re-ranked in 128 dims",
    },
    "hnsw_full": {
        "factory": "HNSW32,Flat",
        "efConstruction": 80,
        "efSearch": 256,
        "notes": "graph search on full vectors (twice the build time of hnsw at 1M)",
    },
    "hnsw_sq8": {
        "factory": "HNSW32,SQ8,RFlat",
        "efConstruction": 80,
        "efSearch": 96,
        "k_factor_rf": 4,
        "notes": "graph on 8-bit codes, top candidates re-ranked exactly",
    },
    "ivf_hnsw": {
        "factory": "IVF{nlist}_HNSW32,SQ8,RFlat",
        "lists_per_sqrt": 16,
        "train_size": 200_000,
        "nprobe": 256,
        "quantizer_efSearch": 256,
        "k_factor_rf": 4,
        "notes": "inverted lists of 8-bit codes, HNSW coarse quantizer, exact re-ranking",
    },
    "pca_ivf": {
        "factory": "PCA64,IVF{nlist}_HNSW32,SQ8,RFlat",
        "lists_per_sqrt": 4,
        "train_size": 200_000,
        "nprobe": 96,
        "quantizer_efSearch": 128,
        "k_factor_rf": 8,
        "notes": "PCA to 64 dims, inverted lists of 8-bit codes, exact re-ranking in 128 dims",
    },
    "ivfpq": {
        "factory": "OPQ32_128,IVF{nlist},PQ32x4fs,RFlat",
        "lists_per_sqrt": 0.5,
        "train_size": 200_000,
        "nprobe": 92,
        "k_factor_rf": 256,
        "notes": "OPQ rotation, flat coarse quantizer, 4-bit fast-scan PQ codes (4 dims per code), "
        "top 256 re-ranked exactly: the watchlist index's recipe from 200k templates",
    },
}


class AnnRecipeError(FacewatchError):
    """An unknown recipe name or a parameter FAISS does not accept."""


def recipe(kind: str, **overrides: Any) -> dict[str, Any]:
    """The named recipe with ``overrides`` applied (a copy)."""
    if kind not in ANN_RECIPES:
        raise AnnRecipeError(f"unknown ANN index kind {kind!r}; known: {', '.join(ANN_RECIPES)}")
    return {**ANN_RECIPES[kind], **overrides}


def search_params(params: dict[str, Any]) -> dict[str, Any]:
    """The search-time subset of a recipe."""
    return {key: value for key, value in params.items() if key not in BUILD_KEYS}


def set_search_params(index: faiss.Index, **params: Any) -> None:
    """Apply search parameters (efSearch, nprobe, quantizer_efSearch, k_factor_rf) to ``index``."""
    space = faiss.ParameterSpace()
    for name, value in params.items():
        try:
            space.set_index_parameter(index, name, float(value))
        except RuntimeError as error:
            raise AnnRecipeError(f"index {type(index).__name__} does not accept search parameter {name}") from error


def build_ann_index(kind: str, embeddings: np.ndarray, seed: int = 1234, **overrides: Any) -> faiss.Index:
    """Train (when the recipe needs it) and fill an index with ``embeddings``; row i gets id i."""
    params = recipe(kind, **overrides)
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise AnnRecipeError(f"expected a non-empty (N, dim) array of embeddings, got shape {vectors.shape}")
    factory = params["factory"].format(nlist=params.get("nlist") or ivf_lists(len(vectors), params))
    try:
        index = faiss.index_factory(vectors.shape[1], factory)
    except RuntimeError as error:
        raise AnnRecipeError(f"FAISS cannot build factory string {factory!r}") from error
    hnsw = _hnsw_of(index)
    if hnsw is not None and "efConstruction" in params:
        hnsw.efConstruction = int(params["efConstruction"])
    if not index.is_trained:
        train = vectors
        train_size = int(params.get("train_size", len(vectors)))
        if len(vectors) > train_size:
            rows = np.random.default_rng(seed).choice(len(vectors), train_size, replace=False)
            train = vectors[np.sort(rows)]
        index.train(train)
    index.add(vectors)
    set_search_params(index, **search_params(params))
    return index


def ivf_lists(count: int, params: dict[str, Any]) -> int:
    """Inverted lists for ``count`` vectors: lists_per_sqrt x sqrt(count), a power of two, trainable."""
    wanted = params.get("lists_per_sqrt", 4) * np.sqrt(count)
    lists = 2 ** int(np.round(np.log2(max(wanted, 1.0))))
    # A list per few dozen vectors at least: fewer points than that leave k-means centroids empty.
    trainable = min(count, int(params.get("train_size", count))) // MIN_POINTS_PER_LIST
    return int(max(1, min(lists, 2 ** int(np.log2(max(trainable, 1))))))


def _hnsw_of(index: faiss.Index) -> Any:
    """The HNSW graph inside ``index`` (itself, or under refine and pre-transform wrappers), or None."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexRefine | faiss.IndexPreTransform):
        inner = index.base_index if isinstance(index, faiss.IndexRefine) else index.index
        index = faiss.downcast_index(inner)
    return index.hnsw if isinstance(index, faiss.IndexHNSW) else None
