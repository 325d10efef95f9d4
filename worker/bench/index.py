"""`facewatch bench index`: nearest-neighbour search over 10k to 1M identities, exact vs approximate.

Queries are real face embeddings (LFW). The database holds one enrolled embedding per LFW person
(another image of the same person is each query's true mate) plus synthetic distractors drawn from
a Gaussian fitted to the real embeddings' mean and covariance, each rescaled to a norm drawn from the
real norms. Distractors spread like real faces, in the same directions, so an index cannot find the
real gallery by its position alone; uniform random directions would sit far from every face and make
approximate search look better than it is. See docs/benchmarks-index.md.

Two implementations are measured side by side: the watchlist's own index (``"impl": "watchlist"``,
worker/watchlist/index.py, the class `identify` and the worker search through, with template ids,
identity mapping and removals) under the config's kind names, and raw FAISS recipes
(``"impl": "faiss"``, worker/watchlist/ann.py). Before the watchlist index is searched, ``removals``
identities are removed from it one call at a time, as `facewatch watchlist remove` does, and the
recall reference leaves them out.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from worker.errors import FacewatchError
from worker.watchlist.ann import build_ann_index, recipe, search_params, set_search_params
from worker.watchlist.index import KINDS as WATCHLIST_KINDS
from worker.watchlist.index import WatchlistIndex

BATCHES = (1, 32)
REMOVALS = 100  # identities removed from the watchlist index before it is searched


class IndexBenchError(FacewatchError):
    """The benchmark cannot run with the given data or options."""


@dataclass(frozen=True)
class GallerySplit:
    """One enrolled embedding per person; the other embeddings are queries with their mate's row."""

    gallery: np.ndarray  # (P, d) float32
    queries: np.ndarray  # (Q, d) float32
    mates: np.ndarray  # (Q,) row of each query's enrolled mate in ``gallery``


def split_gallery(embeddings: np.ndarray, labels: Sequence[str]) -> GallerySplit:
    """Enroll each label's first usable embedding; its later embeddings become queries."""
    vectors = np.asarray(embeddings, np.float32)
    usable = ~np.isnan(vectors).any(axis=1)
    gallery_rows: list[int] = []
    enrolled: dict[str, int] = {}
    query_rows: list[int] = []
    mates: list[int] = []
    for row, label in enumerate(labels):
        if not usable[row]:
            continue
        if label not in enrolled:
            enrolled[label] = len(gallery_rows)
            gallery_rows.append(row)
        else:
            query_rows.append(row)
            mates.append(enrolled[label])
    if not query_rows:
        raise IndexBenchError("no person has two usable embeddings, so there are no queries with a mate")
    return GallerySplit(vectors[gallery_rows], vectors[query_rows], np.array(mates, np.int64))


@dataclass(frozen=True)
class DistractorModel:
    """A Gaussian over face embeddings plus the empirical distribution of their norms."""

    mean: np.ndarray  # (d,)
    factor: np.ndarray  # (d, d), covariance = factor @ factor.T
    norms: np.ndarray  # sorted norms of the real embeddings

    @classmethod
    def fit(cls, embeddings: np.ndarray) -> DistractorModel:
        """Fit to real embeddings (rows with NaN are ignored)."""
        vectors = np.asarray(embeddings, np.float64)
        vectors = vectors[~np.isnan(vectors).any(axis=1)]
        if len(vectors) <= vectors.shape[1]:
            raise IndexBenchError(
                f"need more than {vectors.shape[1]} real embeddings to fit a {vectors.shape[1]}-d covariance, "
                f"got {len(vectors)}"
            )
        covariance = np.cov(vectors, rowvar=False)
        # Eigen-decomposition rather than Cholesky: tolerates a covariance that is only semi-definite.
        values, vectors_ = np.linalg.eigh(covariance)
        factor = vectors_ * np.sqrt(np.clip(values, 0.0, None))[None, :]
        return cls(vectors.mean(axis=0), factor, np.sort(np.linalg.norm(vectors, axis=1)))

    def sample(self, count: int, rng: np.random.Generator, chunk: int = 65_536) -> np.ndarray:
        """``count`` synthetic embeddings, float32, each with a norm resampled from the real norms."""
        dim = len(self.mean)
        out = np.empty((count, dim), np.float32)
        for start in range(0, count, chunk):
            size = min(chunk, count - start)
            draws = rng.standard_normal((size, dim)) @ self.factor.T + self.mean
            draws /= np.linalg.norm(draws, axis=1, keepdims=True)
            draws *= rng.choice(self.norms, size)[:, None]
            out[start : start + size] = draws
        return out


def build_database(split: GallerySplit, size: int, model: DistractorModel, seed: int = 0) -> np.ndarray:
    """``size`` rows: the real gallery, then distractors.

    A size below the gallery keeps the first ``size`` enrolled people (queries of the others then have
    no mate in the database, which recall against exact search does not care about).
    """
    if size < 1:
        raise IndexBenchError(f"database size must be positive, got {size}")
    real = split.gallery[:size]
    extra = size - len(real)
    distractors = model.sample(extra, np.random.default_rng(seed)) if extra else real[:0]
    return np.ascontiguousarray(np.concatenate([real, distractors]))


def exact_top1(database: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and squared distance of each query's nearest database row, by brute force."""
    index = faiss.IndexFlatL2(database.shape[1])
    index.add(database)
    distances, rows = index.search(queries, 1)
    return rows[:, 0], distances[:, 0]


def recall_at_1(
    found: np.ndarray, exact: np.ndarray, found_distances: np.ndarray, exact_distances: np.ndarray
) -> float:
    """Fraction of queries whose top-1 is the exact top-1 (an equally near row counts, for ties)."""
    found = np.asarray(found).reshape(-1)
    same = found == np.asarray(exact).reshape(-1)
    # A different row at the same distance is an equally good answer (duplicates, exact ties).
    tie = np.isclose(np.asarray(found_distances).reshape(-1), np.asarray(exact_distances).reshape(-1), rtol=1e-5)
    return float(np.mean(same | (tie & (found >= 0))))


def latency_percentiles(seconds: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds of per-call times given in seconds."""
    if len(seconds) == 0:
        raise IndexBenchError("no timed calls")
    p50, p99 = np.percentile(np.asarray(seconds, np.float64) * 1000.0, [50, 99])
    return float(p50), float(p99)


def time_searches(
    index: faiss.Index | WatchlistIndex,
    queries: np.ndarray,
    batch: int,
    max_calls: int,
    min_calls: int = 20,
    k: int = 1,
) -> list[float]:
    """Seconds per ``index.search(queries, k)`` call on consecutive batches of ``batch`` queries (cycling)."""
    calls = max(min_calls, min(max_calls, len(queries) // batch))
    times: list[float] = []
    index.search(queries[:batch], k)  # warm-up: first call pays for lazy allocations
    for call in range(calls):
        start = (call * batch) % max(1, len(queries) - batch + 1)
        block = queries[start : start + batch]
        began = time.perf_counter()
        index.search(block, k)
        times.append(time.perf_counter() - began)
    return times


def serialized_mb(index: faiss.Index) -> float:
    """Size of the index as FAISS writes it to disk, in MB (10^6 bytes)."""
    return float(faiss.serialize_index(index).nbytes) / 1e6


@dataclass
class _Contender:
    """One index at one search setting: its row (without timings) and how to search it."""

    row: dict[str, Any]
    index: Any  # faiss.Index or WatchlistIndex
    k: int
    setting: dict[str, Any]
    times: dict[int, list[float]]


def run_index_bench(
    split: GallerySplit,
    sizes: Sequence[int],
    kinds: Sequence[str],
    batches: Sequence[int] = BATCHES,
    max_calls: int = 300,
    overrides: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    progress: bool = True,
    watchlist_kinds: Sequence[str] = (),
    top_k: int = 10,
    removals: int = REMOVALS,
    rounds: int = 5,
) -> Iterator[dict[str, Any]]:
    """One row per (impl, kind, search setting, n, batch).

    At each size every index is built once, then searched in ``rounds`` interleaved rounds (each
    index in turn, ``max_calls / rounds`` calls a round), so machine load hits all rows alike. The
    watchlist's own index (``watchlist_kinds``) fetches ``top_k`` templates per face as the identifier
    does; raw FAISS recipes (``kinds``) the top 1. ``vs_ref`` is a row's p50 over the first row's
    p50 at the same size and batch (the reference: the first watchlist kind, else the first recipe).
    """
    overrides = overrides or {}
    for kind in kinds:
        recipe(kind, **split_sweep(overrides.get(kind, {}))[0])  # fail on an unknown kind before slow work
    for kind in watchlist_kinds:
        if kind not in WATCHLIST_KINDS:
            raise IndexBenchError(f"unknown watchlist index kind {kind!r}; known: {', '.join(WATCHLIST_KINDS)}")
    model = DistractorModel.fit(np.concatenate([split.gallery, split.queries]))
    queries = np.ascontiguousarray(split.queries)
    rounds = max(1, rounds)
    for size in sorted(sizes):
        _log(f"n={size}: generating database", progress)
        database = build_database(split, size, model, seed)
        _log(f"n={size}: exact search for the reference top-1", progress)
        exact = exact_top1(database, queries)
        contenders = [
            _watchlist_contender(kind, database, queries, split.mates, exact, top_k, removals, progress)
            for kind in watchlist_kinds
        ]
        for kind in kinds:
            contenders += _faiss_contenders(
                kind, overrides.get(kind, {}), database, queries, split.mates, exact, seed, progress
            )
        for batch in batches:
            _log(f"n={size}: timing batch {batch}, {rounds} interleaved rounds", progress)
            per_round = max(1, max_calls // rounds)
            for _ in range(rounds):
                for contender in contenders:
                    if contender.setting:
                        set_search_params(contender.index, **contender.setting)
                    contender.times.setdefault(batch, []).extend(
                        time_searches(contender.index, queries, batch, per_round, min_calls=per_round, k=contender.k)
                    )
            reference = None
            for contender in contenders:
                p50, p99 = latency_percentiles(contender.times[batch])
                reference = reference or p50
                yield {
                    **contender.row,
                    "batch": int(batch),
                    "p50_ms": round(p50, 4),
                    "p99_ms": round(p99, 4),
                    "vs_ref": round(p50 / reference, 3),
                    "loadavg": load_average(),
                }
        del contenders


def _faiss_contenders(
    kind: str,
    overrides: dict[str, Any],
    database: np.ndarray,
    queries: np.ndarray,
    mates: np.ndarray,
    exact: tuple[np.ndarray, np.ndarray],
    seed: int,
    progress: bool,
) -> list[_Contender]:
    """A raw FAISS recipe, built once, at each of its swept search settings."""
    build, sweep = split_sweep(overrides)
    params = recipe(kind, **build)
    _log(f"n={len(database)}: building {kind} ({params['factory']})", progress)
    began = time.perf_counter()
    index = build_ann_index(kind, database, seed=seed, **build)
    build_s = time.perf_counter() - began
    memory_mb = serialized_mb(index)
    contenders = []
    for setting in sweep:
        set_search_params(index, **setting)
        searched = {**search_params(params), **setting}
        scores = score_top1(index, queries, exact[0], exact[1], mates, len(database))
        row = {
            "bench": "index",
            "impl": "faiss",
            "kind": kind,
            "n": len(database),
            "k": 1,
            "build_s": round(build_s, 4),
            "memory_mb": round(memory_mb, 2),
            **scores,
            "params": searched,
            **thread_policy(),
        }
        contenders.append(_Contender(row, index, 1, setting, {}))
    return contenders


def load_average() -> float | None:
    """The 1-minute load average, printed beside every timing (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def thread_policy() -> dict[str, Any]:
    """The OpenMP settings the searches ran under (FAISS threads, wait policy)."""
    return {"threads": faiss.omp_get_max_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}


def _watchlist_contender(
    kind: str,
    database: np.ndarray,
    queries: np.ndarray,
    mates: np.ndarray,
    exact: tuple[np.ndarray, np.ndarray],
    top_k: int,
    removals: int,
    progress: bool,
) -> _Contender:
    """The watchlist's own index: one identity per row (template id = row), ``removals`` of them removed."""
    size = len(database)
    _log(f"n={size}: building the watchlist index, kind {kind}", progress)
    identities = [f"id{row}" for row in range(size)]
    began = time.perf_counter()
    index = WatchlistIndex.from_arrays(np.arange(size, dtype=np.int64), identities, database, kind)
    build_s = time.perf_counter() - began
    del identities
    # The last rows are distractors (the real gallery comes first): remove them one identity at a time.
    gone = np.arange(size - min(removals, max(0, size - 1)), size, dtype=np.int64)
    remove_s = []
    for template_id in gone:
        began = time.perf_counter()
        index.remove(np.array([template_id]))
        remove_s.append(time.perf_counter() - began)
    rebuilt = index.compactions
    exact_rows, exact_distances = _exact_without(database, queries, exact, gone)
    _, found, _ = index.search(queries, top_k)
    distances = np.sum((database[np.maximum(found[:, 0], 0)] - queries) ** 2, axis=1)
    distances[found[:, 0] < 0] = np.inf
    present = mates < size
    mate_first = exact_rows == mates
    row = {
        "bench": "index",
        "impl": "watchlist",
        "kind": kind,
        "effective_kind": index.effective_kind,
        "n": int(size),
        "k": int(top_k),
        "build_s": round(build_s, 4),
        "memory_mb": round(index.memory_bytes() / 1e6, 2),
        "removed": len(gone),
        "remove_p50_ms": round(latency_percentiles(remove_s)[0], 4) if remove_s else None,
        "rebuilds_on_removal": int(rebuilt),
        "recall_at_1": round(recall_at_1(found[:, 0], exact_rows, distances, exact_distances), 6),
        "mate_at_1": round(float(np.mean(found[present, 0] == mates[present])), 6) if present.any() else None,
        "mate_recall": round(float(np.mean(found[mate_first, 0] == mates[mate_first])), 6)
        if mate_first.any()
        else None,
        "params": index.search_settings(),
        **thread_policy(),
    }
    return _Contender(row, index, top_k, {}, {})


def _exact_without(
    database: np.ndarray, queries: np.ndarray, exact: tuple[np.ndarray, np.ndarray], gone: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-1 once the rows ``gone`` are removed: only queries whose top-1 was removed are redone."""
    rows, distances = exact[0].copy(), exact[1].copy()
    redo = np.isin(rows, gone)
    if redo.any():
        keep = np.setdiff1d(np.arange(len(database)), gone)
        found, found_d = exact_top1(np.ascontiguousarray(database[keep]), np.ascontiguousarray(queries[redo]))
        rows[redo], distances[redo] = keep[found], found_d
    return rows, distances


def split_sweep(overrides: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(build overrides, search settings to try in turn): list values of search parameters are swept."""
    build = {key: value for key, value in overrides.items() if not isinstance(value, list)}
    swept = {key: value for key, value in overrides.items() if isinstance(value, list)}
    settings: list[dict[str, Any]] = [{}]
    for key, values in swept.items():
        settings = [{**setting, key: value} for setting in settings for value in values]
    return build, settings


def score_top1(
    index: faiss.Index,
    queries: np.ndarray,
    exact_rows: np.ndarray,
    exact_distances: np.ndarray,
    mates: np.ndarray,
    size: int,
) -> dict[str, float | None]:
    """recall_at_1 vs exact search; mate_at_1 (top-1 is the true mate); mate_recall (kept when exact had it)."""
    distances, rows = index.search(queries, 1)
    found = rows[:, 0]
    present = mates < size
    # Queries whose exact nearest row is their own mate: does the index keep that right answer?
    mate_first = exact_rows == mates
    return {
        "recall_at_1": round(recall_at_1(found, exact_rows, distances[:, 0], exact_distances), 6),
        "mate_at_1": round(float(np.mean(found[present] == mates[present])), 6) if present.any() else None,
        "mate_recall": round(float(np.mean(found[mate_first] == mates[mate_first])), 6) if mate_first.any() else None,
    }


def _log(message: str, enabled: bool) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
