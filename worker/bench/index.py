"""`facewatch bench index`: nearest-neighbour search over 10k to 1M identities, exact vs approximate.

Queries are real face embeddings (LFW). The database holds one enrolled embedding per LFW person
(another image of the same person is each query's true mate) plus synthetic distractors drawn from
a Gaussian fitted to the real embeddings' mean and covariance, each rescaled to a norm drawn from the
real norms. Distractors spread like real faces, in the same directions, so an index cannot find the
real gallery by its position alone; uniform random directions would sit far from every face and make
approximate search look better than it is. See docs/benchmarks-index.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from worker.errors import FacewatchError
from worker.watchlist.ann import build_ann_index, recipe, search_params, set_search_params

BATCHES = (1, 32)


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
    index: faiss.Index, queries: np.ndarray, batch: int, max_calls: int, min_calls: int = 20
) -> list[float]:
    """Seconds per ``index.search`` call on consecutive batches of ``batch`` queries (cycling)."""
    calls = max(min_calls, min(max_calls, len(queries) // batch))
    times: list[float] = []
    index.search(queries[:batch], 1)  # warm-up: first call pays for lazy allocations
    for call in range(calls):
        start = (call * batch) % max(1, len(queries) - batch + 1)
        block = queries[start : start + batch]
        began = time.perf_counter()
        index.search(block, 1)
        times.append(time.perf_counter() - began)
    return times


def serialized_mb(index: faiss.Index) -> float:
    """Size of the index as FAISS writes it to disk, in MB (10^6 bytes)."""
    return float(faiss.serialize_index(index).nbytes) / 1e6


def run_index_bench(
    split: GallerySplit,
    sizes: Sequence[int],
    kinds: Sequence[str],
    batches: Sequence[int] = BATCHES,
    max_calls: int = 300,
    overrides: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """One row per (kind, n, batch); indexes are built once per (kind, n) and searched at each batch."""
    overrides = overrides or {}
    for kind in kinds:
        recipe(kind, **split_sweep(overrides.get(kind, {}))[0])  # fail on an unknown kind before slow work
    model = DistractorModel.fit(np.concatenate([split.gallery, split.queries]))
    queries = np.ascontiguousarray(split.queries)
    for size in sorted(sizes):
        _log(f"n={size}: generating database", progress)
        database = build_database(split, size, model, seed)
        _log(f"n={size}: exact search for the reference top-1", progress)
        exact_rows, exact_distances = exact_top1(database, queries)
        for kind in kinds:
            build, sweep = split_sweep(overrides.get(kind, {}))
            params = recipe(kind, **build)
            _log(f"n={size}: building {kind} ({params['factory']})", progress)
            began = time.perf_counter()
            index = build_ann_index(kind, database, seed=seed, **build)
            build_s = time.perf_counter() - began
            memory_mb = serialized_mb(index)
            for setting in sweep:
                set_search_params(index, **setting)
                searched = {**search_params(params), **setting}
                scores = score_top1(index, queries, exact_rows, exact_distances, split.mates, len(database))
                for batch in batches:
                    p50, p99 = latency_percentiles(time_searches(index, queries, batch, max_calls))
                    yield {
                        "bench": "index",
                        "kind": kind,
                        "n": int(size),
                        "batch": int(batch),
                        "p50_ms": round(p50, 4),
                        "p99_ms": round(p99, 4),
                        "build_s": round(build_s, 4),
                        "memory_mb": round(memory_mb, 2),
                        **scores,
                        "params": searched,
                    }
            del index


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
