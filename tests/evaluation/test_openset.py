"""Open-set identification: the split, nearest-gallery search, FPIR thresholds and the `eval identify` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from worker.cli.main import main
from worker.evaluation.openset import (
    DatasetError,
    det_curve,
    fpir_at,
    list_identities,
    nearest_gallery,
    open_set_distances,
    open_set_metrics,
    split_open_set,
    threshold_at_fpir,
)


def test_split_enrolls_first_image_and_uses_singletons_as_strangers(tmp_path):
    for name, count in (("Ann", 3), ("Bob", 1), ("Cid", 2), ("Dee", 1)):
        (tmp_path / name).mkdir()
        for i in range(count):
            (tmp_path / name / f"{name}_{i}.jpg").write_bytes(b"x")
    (tmp_path / "Empty").mkdir()
    (tmp_path / "Cid" / "notes.txt").write_text("not an image")
    split = split_open_set(list_identities(tmp_path))
    assert split.names == ["Ann", "Cid"]
    assert [p.name for p in split.gallery] == ["Ann_0.jpg", "Cid_0.jpg"]
    assert [p.name for p in split.mated] == ["Ann_1.jpg", "Ann_2.jpg", "Cid_1.jpg"]
    assert split.mated_labels.tolist() == [0, 0, 1]
    assert sorted(p.name for p in split.non_mated) == ["Bob_0.jpg", "Dee_0.jpg"]


def test_only_the_people_asked_for_are_listed(tmp_path):
    from worker.training.data import lfw_pair_people

    for name in ("Ann", "Bob", "Cid"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}_1.jpg").write_bytes(b"x")
    pairs = tmp_path / "pairsDevTest.txt"
    pairs.write_text("1\nAnn\t1\t2\nAnn\t1\tZed\t1\n", encoding="utf-8")  # View 1's layout; Zed has no folder
    assert lfw_pair_people(pairs) == {"Ann", "Zed"}
    assert list(list_identities(tmp_path, lfw_pair_people(pairs))) == ["Ann"]
    with pytest.raises(DatasetError, match="no folder of any of the 1 people"):
        list_identities(tmp_path, {"Zed"})


def test_bad_datasets_are_reported(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        list_identities(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no identity folders"):
        list_identities(tmp_path)
    (tmp_path / "Solo").mkdir()
    (tmp_path / "Solo" / "a.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="two or more"):
        split_open_set(list_identities(tmp_path))


def test_nearest_gallery_skips_missing_embeddings():
    gallery = np.array([[0, 0], [np.nan, np.nan], [3, 0]], np.float32)
    probes = np.array([[0.5, 0], [2.9, 0.0], [np.nan, 1]], np.float32)
    index, distance = nearest_gallery(probes, gallery, chunk=2)
    assert index.tolist() == [0, 2, -1]
    assert distance[:2] == pytest.approx([0.5, 0.1], abs=1e-6)
    assert np.isinf(distance[2])


def test_threshold_keeps_fpir_at_or_below_target():
    distances = np.array([0.30, 0.40, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90, 1.00, 1.10])
    # 20% allows 2 alarms: the threshold sits just under the third smallest distance (0.40, tied with the second),
    # so only 0.30 gets in: the tie cannot be split.
    t = threshold_at_fpir(distances, 0.2)
    assert 0.30 <= t < 0.40 and fpir_at(distances, t) == pytest.approx(0.1)
    t = threshold_at_fpir(distances, 0.3)
    assert 0.40 <= t < 0.50 and fpir_at(distances, t) == pytest.approx(0.3)
    t = threshold_at_fpir(distances, 0.05)  # no alarm allowed
    assert t < 0.30 and fpir_at(distances, t) == 0.0
    assert threshold_at_fpir(distances, 1.0) == 1.10
    rng = np.random.default_rng(0)
    many = rng.random(5000)
    for target in (0.01, 0.001):
        t = threshold_at_fpir(many, target)
        assert fpir_at(many, t) <= target
        assert fpir_at(many, np.nextafter(np.sort(many)[int(target * 5000)], np.inf)) > target


def test_open_set_metrics_on_a_known_case():
    # Three enrolled people on a line; probes at known distances.
    gallery = np.array([[0.0, 0], [10.0, 0], [20.0, 0]], np.float32)
    labels = np.array([0, 1, 2])
    mated = np.array([[0.1, 0], [10.2, 0], [20.3, 0], [14.0, 0], [5.2, 0]], np.float32)
    mated_labels = np.array([0, 1, 2, 2, 0])  # the last two are nearer someone else: rank-1 misses
    # Strangers at nearest distances 0.25, 1, 2, ..., 99 (100 probes).
    strangers = np.array([[0.0, 0.25]] + [[20.0 + d, 0] for d in range(1, 100)], np.float32)
    metrics = open_set_metrics(gallery, labels, mated, mated_labels, strangers, fpirs=(0.01, 0.001))
    assert metrics["rank1"] == pytest.approx(3 / 5)
    # FPIR 1%: one alarm allowed (the 0.25 stranger); the threshold sits under the next distance, 1.0.
    assert 0.25 <= metrics["threshold_at_fpir_1pct"] < 1.0
    assert metrics["fpir_measured_1pct"] == pytest.approx(0.01)
    assert metrics["tpir_at_fpir_1pct"] == pytest.approx(3 / 5)
    # FPIR 0.1%: no alarm allowed; the threshold drops under 0.25, so only the 0.1 and 0.2 probes count.
    assert metrics["threshold_at_fpir_0_1pct"] < 0.25
    assert metrics["tpir_at_fpir_0_1pct"] == pytest.approx(2 / 5)
    assert metrics["fpir_measured_0_1pct"] == 0.0


def test_det_curve_and_same_person_distances_on_a_known_case():
    gallery = np.array([[0.0, 0], [10.0, 0], [20.0, 0]], np.float32)
    mated = np.array([[0.1, 0], [0.0, 0.2], [20.3, 0], [14.0, 0], [5.2, 0]], np.float32)
    mated_labels = np.array([0, 0, 2, 2, 0])  # the last two are nearer someone else (identity 1)
    strangers = np.array([[0.0, 0.25]] + [[20.0 + d, 0] for d in range(1, 100)], np.float32)
    distances = open_set_distances(gallery, np.array([0, 1, 2]), mated, mated_labels, strangers)
    assert distances.correct.tolist() == [True, True, True, False, False]
    assert distances.same_person == pytest.approx([0.1, 0.2, 0.3, 6.0, 5.2], abs=1e-5)
    thresholds, fpir, fnir = det_curve(distances)
    at = {round(float(t), 4): (f, n) for t, f, n in zip(thresholds, fpir, fnir, strict=True)}
    assert at[0.1] == (0.0, 0.8) and at[0.2] == (0.0, 0.6)
    assert at[0.25] == (0.01, 0.6) and at[0.3] == (0.01, 0.4)
    # A wrong rank-1 identity is a miss at every threshold: FNIR never drops under 2/5.
    assert at[99.0] == (1.0, pytest.approx(0.4)) and fnir.min() == pytest.approx(0.4)
    assert np.all(np.diff(fpir) >= 0) and np.all(np.diff(fnir) <= 0)


def lfw_people(shared: Path, tmp_path: Path, multi: int, single: int) -> Path:
    """Symlinks to ``multi`` LFW people with 2-4 images and ``single`` people with one image."""
    root = tmp_path / "people"
    wanted = {"multi": multi, "single": single}
    for folder in sorted((shared / "data" / "lfw" / "images").iterdir()):
        images = sorted(folder.glob("*.jpg"))
        group = "single" if len(images) == 1 else "multi" if len(images) <= 4 else None
        if group is None or wanted[group] == 0:
            continue
        wanted[group] -= 1
        (root / folder.name).mkdir(parents=True)
        for image in images:
            (root / folder.name / image.name).symlink_to(image)
        if not any(wanted.values()):
            break
    return root


@pytest.mark.shared
def test_eval_identify_cli_on_real_faces(shared_dir, tmp_path, capsys):
    dataset = lfw_people(shared_dir, tmp_path, multi=6, single=4)
    det, histograms = tmp_path / "det.png", tmp_path / "distances.png"
    plots = ["--det", str(det), "--histograms", str(histograms)]
    argv = ["eval", "identify", "--dataset", str(dataset), "--json", "--quiet", "--no-cache", *plots]
    assert main(argv) == 0
    for picture in (det, histograms):
        image = cv2.imread(str(picture))
        assert image is not None and image.shape[0] >= 400 and image.shape[1] >= 600
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20  # curves, bars, lines and text, not a blank
    lines = capsys.readouterr().out.splitlines()
    summary = json.loads(lines[-1])
    assert summary["identities"] == 10 and summary["gallery"] == 6 and summary["non_mated_probes"] == 4
    assert summary["mated_probes"] >= 6
    assert summary["images"] == summary["gallery"] + summary["mated_probes"] + summary["non_mated_probes"]
    # dlib's network tells a handful of people apart almost always.
    assert summary["rank1"] >= 0.8
    for key in ("tpir_at_fpir_1pct", "tpir_at_fpir_0_1pct", "threshold_at_fpir_1pct", "threshold_at_fpir_0_1pct"):
        assert key in summary
    # Four strangers: 1% and 0.1% both allow no alarm, so no stranger is at or under either threshold.
    assert summary["fpir_measured_1pct"] == 0.0
    assert summary["tpir_at_fpir_1pct"] <= summary["rank1"]
    assert 0 <= summary["failed_detections"] <= summary["images"]
    det.unlink()
    assert main([*argv[:4], "--quiet", "--cache-dir", str(tmp_path / "cache"), *plots]) == 0
    out, err = capsys.readouterr()
    assert "rank-1 identification rate" in out and "FPIR   1%" in out
    assert det.is_file() and f"DET curve: {det}; distance histograms: {histograms}" in err
    missing = tmp_path / "no-such-folder" / "det.png"
    assert main([*argv[:4], "--quiet", "--det", str(missing)]) == 1
    assert capsys.readouterr().err.strip() == f"facewatch: error: {missing}: folder {missing.parent} does not exist"


def test_cache_key_follows_settings_and_files(tmp_path):
    from worker.config import load_settings
    from worker.evaluation.cache import cache_key
    from worker.evaluation.dataset import DatasetEmbedder
    from worker.recognition import FaceRecognizer

    (tmp_path / "A").mkdir()
    image = tmp_path / "A" / "a.jpg"
    image.write_bytes(b"x")
    recognizer = FaceRecognizer(load_settings(None, {}))
    key = cache_key(DatasetEmbedder(recognizer), [image], tmp_path)
    assert cache_key(DatasetEmbedder(recognizer, threads=1), [image], tmp_path) == key  # threads change nothing
    assert cache_key(DatasetEmbedder(recognizer, flip_average=False), [image], tmp_path) != key
    other = FaceRecognizer(load_settings(None, {"landmarks": {"points": 68}}))
    assert cache_key(DatasetEmbedder(other), [image], tmp_path) != key
    aligned = FaceRecognizer(load_settings(None, {"landmarks": {"alignment": "shape_predictor"}}))
    assert cache_key(DatasetEmbedder(aligned), [image], tmp_path) != key
    for detector in ({"name": "hog"}, {"retinaface_score_threshold": 0.7}):
        detected = FaceRecognizer(load_settings(None, {"detector": detector}))
        assert cache_key(DatasetEmbedder(detected), [image], tmp_path) != key
    image.write_bytes(b"xy")  # a changed file makes a new entry
    assert cache_key(DatasetEmbedder(recognizer), [image], tmp_path) != key


def test_cache_key_follows_the_resolved_precisions(tmp_path):
    """bf16 vectors are cached apart from fp32 ones; the embedder's 'auto' evaluates in fp32 (only the worker's
    search is lowered), the detectors' 'auto' is keyed by what it resolves to here, and the fp32 key does not
    name a precision the older keys did not have (their entries stay valid)."""
    from worker.config import load_settings
    from worker.evaluation.cache import cache_key
    from worker.evaluation.dataset import DatasetEmbedder
    from worker.recognition import FaceRecognizer
    from worker.runtime.device import cpu_has_bf16

    (tmp_path / "A").mkdir()
    image = tmp_path / "A" / "a.jpg"
    image.write_bytes(b"x")

    def key(**sections):
        overrides = {"embedder": {"device": "cpu"}, "detector": {"device": "cpu"}}
        for name, values in sections.items():
            overrides[name] = {**overrides.get(name, {}), **values}
        return cache_key(DatasetEmbedder(FaceRecognizer(load_settings(None, overrides))), [image], tmp_path)

    fp32 = key(embedder={"precision": "fp32"}, detector={"retinaface_precision": "fp32", "mmod_precision": "fp32"})
    assert key() == fp32  # the defaults
    if not cpu_has_bf16():
        assert key(embedder={"precision": "auto"}, detector={"retinaface_precision": "auto"}) == fp32
        return
    embedder_bf16 = key(embedder={"precision": "bf16"})
    assert embedder_bf16 != fp32
    assert key(embedder={"precision": "auto"}) == fp32
    detector_bf16 = key(detector={"retinaface_precision": "bf16"})
    assert detector_bf16 not in (fp32, embedder_bf16)
    assert key(detector={"retinaface_precision": "auto"}) == detector_bf16
    assert key(detector={"mmod_precision": "bf16"}) not in (fp32, embedder_bf16, detector_bf16)
