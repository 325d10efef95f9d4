"""`facewatch bench index`: recall and latency arithmetic, the distractor model, ANN recipes, JSON rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from worker.bench.index import (
    DistractorModel,
    IndexBenchError,
    build_database,
    exact_top1,
    latency_percentiles,
    recall_at_1,
    split_gallery,
)
from worker.cli.main import main
from worker.watchlist.ann import ANN_RECIPES, AnnRecipeError, build_ann_index, ivf_lists, set_search_params

ROW_KEYS = {"bench", "impl", "kind", "n", "batch", "k", "p50_ms", "p99_ms", "recall_at_1", "build_s", "memory_mb"}


def anisotropic(count: int, dim: int = 128, seed: int = 0) -> np.ndarray:
    """Correlated Gaussian data with a decaying spectrum, shifted off the origin, like face embeddings."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scales = 0.2 * np.exp(-np.arange(dim) / 20.0)
    return (rng.standard_normal((count, dim)) * scales @ basis.T + rng.normal(0, 0.1, dim)).astype(np.float32)


def test_recall_counts_same_row_or_equal_distance():
    exact = np.array([3, 5, 7, 9])
    exact_d = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    # Row 1 differs but at the same distance (a tie); row 2 differs and is farther; row 3 is missing (-1).
    found = np.array([3, 6, 8, -1])
    found_d = np.array([0.1, 0.2, 0.35, 0.4], np.float32)
    assert recall_at_1(found, exact, found_d, exact_d) == pytest.approx(0.5)
    assert recall_at_1(exact, exact, exact_d, exact_d) == 1.0


def test_latency_percentiles_in_milliseconds():
    seconds = np.arange(1, 101) / 1000.0  # 1 ms .. 100 ms
    p50, p99 = latency_percentiles(seconds)
    assert p50 == pytest.approx(50.5)
    assert p99 == pytest.approx(99.01)
    with pytest.raises(IndexBenchError):
        latency_percentiles([])


def test_split_gallery_enrolls_first_usable_embedding():
    vectors = np.arange(12, dtype=np.float32).reshape(6, 2)
    vectors[0] = np.nan  # A's first image has no face: its second image is enrolled instead
    labels = ["A", "A", "A", "B", "C", "C"]
    split = split_gallery(vectors, labels)
    assert split.gallery.tolist() == [vectors[1].tolist(), vectors[3].tolist(), vectors[4].tolist()]
    assert split.queries.tolist() == [vectors[2].tolist(), vectors[5].tolist()]
    assert split.mates.tolist() == [0, 2]
    with pytest.raises(IndexBenchError, match="no person"):
        split_gallery(vectors[3:5], ["B", "C"])


def test_distractors_follow_the_real_distribution():
    real = anisotropic(20_000)
    model = DistractorModel.fit(real)
    fake = model.sample(20_000, np.random.default_rng(1))
    assert fake.dtype == np.float32 and fake.shape == (20_000, 128)
    # Same centre and same principal spread as the real set ...
    assert np.linalg.norm(fake.mean(0) - real.mean(0)) < 0.05 * np.linalg.norm(real.mean(0))
    real_var = np.linalg.eigvalsh(np.cov(real, rowvar=False))[::-1]
    fake_var = np.linalg.eigvalsh(np.cov(fake, rowvar=False))[::-1]
    assert np.allclose(fake_var[:10], real_var[:10], rtol=0.15)
    # ... norms only from the real range ...
    norms = np.linalg.norm(fake, axis=1)
    real_norms = np.linalg.norm(real, axis=1)
    assert real_norms.min() - 1e-5 <= norms.min() and norms.max() <= real_norms.max() + 1e-5
    # ... and, unlike uniform random directions, as close to real points as real points are to each other.
    uniform = np.random.default_rng(2).standard_normal((2000, 128)).astype(np.float32)
    uniform *= (np.median(real_norms) / np.linalg.norm(uniform, axis=1))[:, None]
    probe = real[:500]
    nearest_fake = np.sqrt(exact_top1(fake[:2000], probe)[1])
    nearest_real = np.sqrt(exact_top1(real[-2000:], probe)[1])
    nearest_uniform = np.sqrt(exact_top1(uniform, probe)[1])
    assert abs(np.median(nearest_fake) / np.median(nearest_real) - 1) < 0.15
    assert np.median(nearest_uniform) > 2 * np.median(nearest_real)


def test_distractor_model_needs_enough_samples():
    with pytest.raises(IndexBenchError, match="more than 128"):
        DistractorModel.fit(anisotropic(100))


def test_database_starts_with_the_gallery():
    real = anisotropic(600)
    split = split_gallery(real, [f"p{i // 2}" for i in range(600)])
    model = DistractorModel.fit(real)
    database = build_database(split, 1000, model)
    assert database.shape == (1000, 128)
    assert np.array_equal(database[:300], split.gallery)
    assert np.array_equal(build_database(split, 1000, model), database)  # seeded
    assert np.array_equal(build_database(split, 100, model), split.gallery[:100])


@pytest.mark.parametrize("kind", sorted(ANN_RECIPES))
def test_every_recipe_builds_and_searches(kind):
    data = anisotropic(6000)
    index = build_ann_index(kind, data)
    assert index.ntotal == len(data)
    queries = data[:200] + np.float32(1e-3)
    exact_rows, exact_d = exact_top1(data, queries)
    distances, rows = index.search(queries, 1)
    assert recall_at_1(rows[:, 0], exact_rows, distances[:, 0], exact_d) >= (0.99 if kind == "exact" else 0.8)


def test_inverted_lists_grow_with_the_square_root_and_stay_trainable():
    assert ivf_lists(1_000_000, {"lists_per_sqrt": 16}) == 16384
    assert ivf_lists(1_000_000, {"lists_per_sqrt": 16, "train_size": 100_000}) == 8192
    assert ivf_lists(100_000, {"lists_per_sqrt": 4}) == 1024
    assert ivf_lists(6000, {"lists_per_sqrt": 16}) == 256  # 6000 / 12 = 500 points allow 256 lists
    assert ivf_lists(10, {}) == 1


def test_unknown_kind_and_parameter_are_reported():
    with pytest.raises(AnnRecipeError, match="unknown ANN index kind"):
        build_ann_index("annoy", anisotropic(200))
    index = build_ann_index("exact", anisotropic(200))
    with pytest.raises(AnnRecipeError, match="efSearch"):
        set_search_params(index, efSearch=64)


def lfw_subset(shared: Path, tmp_path: Path, people: int, min_images: int) -> Path:
    """A folder-per-identity tree of symlinks to the first LFW people with at least ``min_images`` images."""
    root = tmp_path / "lfw-subset"
    chosen = 0
    for folder in sorted((shared / "data" / "lfw" / "images").iterdir()):
        images = sorted(folder.glob("*.jpg"))
        if len(images) < min_images:
            continue
        (root / folder.name).mkdir(parents=True)
        for image in images[:8]:
            (root / folder.name / image.name).symlink_to(image)
        chosen += 1
        if chosen == people:
            break
    return root


@pytest.mark.shared
def test_bench_index_json_rows(shared_dir, tmp_path, capsys):
    lfw = lfw_subset(shared_dir, tmp_path, people=22, min_images=6)  # 22 x 6..8 images: > 128 to fit
    argv = ["bench", "index", "--lfw", str(lfw), "--sizes", "2000", "--watchlist-kinds", "auto,hnsw,ivfpq"]
    argv += ["--kinds", "exact,hnsw", "--json", "--cache-dir", str(tmp_path / "cache"), "--max-calls", "20"]
    argv += ["--rounds", "2", "--removals", "50", "--quiet"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    contenders = [("watchlist", "auto"), ("watchlist", "hnsw"), ("watchlist", "ivfpq"), ("faiss", "exact")]
    contenders += [("faiss", "hnsw")]
    assert [(row["impl"], row["kind"], row["batch"]) for row in rows] == [
        (*contender, batch) for batch in (1, 32) for contender in contenders
    ]
    for row in rows:
        assert row.keys() >= ROW_KEYS
        assert row["bench"] == "index" and row["n"] == 2000
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["vs_ref"] > 0
        assert row["build_s"] >= 0 and row["memory_mb"] > 0
        assert 0.9 <= row["recall_at_1"] <= 1.0
        assert row["threads"] >= 1 and row["omp_wait_policy"] == "PASSIVE"  # the worker's policy
    watchlist = {row["kind"]: row for row in rows if row["impl"] == "watchlist"}
    # auto is exact at this size; 2000 real and synthetic rows train the 22 lists of ivfpq.
    assert [watchlist[kind]["effective_kind"] for kind in ("auto", "hnsw", "ivfpq")] == ["exact", "hnsw", "ivfpq"]
    for row in watchlist.values():
        # 50 identities removed one call at a time, none of them rebuilding the index, searched for 10.
        assert row["removed"] == 50 and row["rebuilds_on_removal"] == 0 and row["k"] == 10
    # Exact search stays exact with removals and id mapping on top; the approximate ones nearly so.
    assert watchlist["auto"]["recall_at_1"] == 1.0 and watchlist["ivfpq"]["recall_at_1"] >= 0.98
    assert rows[0]["vs_ref"] == rows[5]["vs_ref"] == 1.0  # the reference: the first row of each batch
    # Flat storage is at least n x 128 float32.
    assert watchlist["auto"]["memory_mb"] >= 1.0 and rows[3]["memory_mb"] >= 1.0
    # The embeddings were cached: a second run reads them instead of embedding again.
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2
    table_argv = [arg for arg in argv if arg != "--json"]
    assert main(table_argv) == 0
    assert "recall@1" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == cached


def test_bench_index_rejects_unknown_kind(tmp_path, capsys):
    assert main(["bench", "index", "--lfw", str(tmp_path), "--kinds", "annoy", "--quiet"]) == 1
    assert "unknown ANN index kind 'annoy'" in capsys.readouterr().err
    assert main(["bench", "index", "--lfw", str(tmp_path), "--watchlist-kinds", "lsh", "--quiet"]) == 1
    assert "unknown watchlist index kind 'lsh'" in capsys.readouterr().err
