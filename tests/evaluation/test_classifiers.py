"""The nearest-template and SVM rules compared on one split (worker/evaluation/classifiers.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worker.config import WatchlistConfig
from worker.errors import FacewatchError
from worker.evaluation.classifiers import compare_rules, split_with_templates


def test_the_split_enrolls_k_images_of_those_with_more_and_makes_the_rest_strangers():
    identities = {
        "ann": [Path(f"ann/{i}.jpg") for i in range(5)],
        "bob": [Path(f"bob/{i}.jpg") for i in range(4)],
        "cy": [Path(f"cy/{i}.jpg") for i in range(3)],  # exactly K: a stranger
        "di": [Path("di/0.jpg")],
    }
    split = split_with_templates(identities, 3)
    assert split.names == ["ann", "bob"]
    assert split.gallery == identities["ann"][:3] + identities["bob"][:3]
    assert split.gallery_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert split.mated == identities["ann"][3:] + identities["bob"][3:]
    assert split.mated_labels.tolist() == [0, 0, 1]
    assert split.non_mated == [Path("cy/0.jpg"), Path("di/0.jpg")]
    with pytest.raises(FacewatchError, match="fewer than 2 identities"):
        split_with_templates(identities, 4)
    with pytest.raises(FacewatchError, match="at least 1"):
        split_with_templates(identities, 0)


def test_both_rules_name_close_people_and_no_far_strangers():
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(6, 128))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def around(centre: np.ndarray, n: int) -> np.ndarray:
        faces = centre + rng.normal(scale=0.02, size=(n, 128))
        return (faces / np.linalg.norm(faces, axis=1, keepdims=True)).astype(np.float32)

    gallery = np.concatenate([around(c, 3) for c in centres])
    labels = np.repeat(np.arange(6), 3)
    mated = np.concatenate([around(c, 2) for c in centres])
    mated_labels = np.repeat(np.arange(6), 2)
    strangers = around(rng.normal(size=128) / 11.3, 1)  # far from every centre
    strangers = np.concatenate([strangers, np.full((1, 128), np.nan, np.float32)])  # and one without an embedding
    results = compare_rules(gallery, labels, mated, mated_labels, strangers, WatchlistConfig(store="x.db"))
    assert [r.rule for r in results] == ["nearest", "svm"]
    for result in results:
        assert result.correct == 1.0 and result.wrong == 0.0 and result.false_match == 0.0
