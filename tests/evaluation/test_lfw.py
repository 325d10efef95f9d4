"""LFW protocol logic: pairs parsing and the 10-fold threshold selection."""

from __future__ import annotations

import numpy as np
import pytest

from tests.realdata import shared_data
from worker.errors import FacewatchError
from worker.evaluation.lfw import best_threshold, read_pairs, ten_fold


def test_best_threshold_separates_when_possible():
    distances = np.array([0.2, 0.3, 0.5, 0.7, 0.8])
    same = np.array([True, True, True, False, False])
    threshold = best_threshold(distances, same)
    assert 0.5 < threshold < 0.7
    assert np.all((distances < threshold) == same)


def test_best_threshold_with_overlap_maximises_accuracy():
    rng = np.random.default_rng(1)
    same = rng.random(400) < 0.5
    distances = np.where(same, rng.normal(0.45, 0.1, 400), rng.normal(0.75, 0.1, 400))
    threshold = best_threshold(distances, same)
    grid = np.linspace(0, 1.2, 2001)
    best_on_grid = max(np.mean((distances < t) == same) for t in grid)
    assert np.mean((distances < threshold) == same) >= best_on_grid


def test_ten_fold_uses_other_folds_for_each_threshold():
    # Fold 0's own best threshold would be 0.9, but the other folds agree on about 0.5.
    distances = np.array([0.8, 1.0] + [0.3, 0.7] * 9)
    same = np.array([True, False] + [True, False] * 9)
    folds = np.repeat(np.arange(10), 2)
    accuracies, thresholds = ten_fold(distances, same, folds)
    assert accuracies[0] == 0.5 and np.all(accuracies[1:] == 1.0)
    assert 0.3 < thresholds[0] < 0.7


def test_official_pairs_file_parses():
    data = shared_data()
    pairs = read_pairs(data / "lfw" / "pairs.txt", data / "lfw" / "images")
    assert len(pairs) == 6000
    assert sum(pair.same for pair in pairs) == 3000
    assert [pair.fold for pair in pairs[::600]] == list(range(10))
    assert pairs[0].same and pairs[0].a.parent == pairs[0].b.parent
    assert not pairs[300].same


def test_malformed_pairs_files(tmp_path):
    images = tmp_path / "images"
    (images / "A").mkdir(parents=True)
    for name in ("A_0001.jpg", "A_0002.jpg"):
        (images / "A" / name).write_bytes(b"x")
    good = tmp_path / "good.txt"
    good.write_text("1\t1\nA\t1\t2\nA\t1\tA\t2\n")
    assert len(read_pairs(good, images)) == 2
    cases = {
        "1\t2\nA\t1\t2\nA\t1\tA\t2\n": "header promises 4",
        "1\t1\nA\t1\nA\t1\tA\t2\n": "expected 3 or 4 fields",
        "1\t1\nA\tone\t2\nA\t1\tA\t2\n": "not an integer",
        "1\t1\nA\t1\t3\nA\t1\tA\t2\n": "missing",
        "ten\n": "header",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(FacewatchError, match=message):
            read_pairs(bad, images)


def test_a_single_fold_file_is_split_into_ten_folds():
    # View 1's pairsDevTest.txt is one fold: 500 same-person pairs, then 500 different-person ones. Choosing each
    # threshold on "the other folds" used to find none (IndexError).
    same = np.array([True] * 50 + [False] * 50)
    distances = np.where(same, 0.3, 0.9)
    distances[0] = 0.95  # one same-person pair that no threshold gets right
    accuracies, thresholds = ten_fold(distances, same, np.zeros(100, int))
    assert len(accuracies) == 10
    assert sorted(accuracies.tolist()) == [0.9] + [1.0] * 9
    assert ((thresholds > 0.3) & (thresholds < 0.9)).all()
