"""Metric labels stay bounded whatever frame keys arrive."""

from __future__ import annotations

from worker.obs.metrics import MAX_CAMERA_LABELS, Metrics


def test_camera_labels_are_bounded_and_malformed_ids_share_one_label():
    metrics = Metrics()
    labels = [metrics.camera_label(f"cam-{i}") for i in range(MAX_CAMERA_LABELS + 50)]
    assert labels[:MAX_CAMERA_LABELS] == [f"cam-{i}" for i in range(MAX_CAMERA_LABELS)]
    assert set(labels[MAX_CAMERA_LABELS:]) == {"other"}
    assert metrics.camera_label("cam-3") == "cam-3"  # a known camera keeps its label
    assert {metrics.camera_label(bad) for bad in ("", "a b", "x" * 129, "caméra/1")} == {"invalid"}


def test_five_thousand_random_keys_make_a_bounded_number_of_series():
    metrics = Metrics()
    for i in range(5000):
        metrics.frames_received.labels(metrics.camera_label(f"key{i:05d}")).inc()
    series = {s.labels["camera"] for family in metrics.frames_received.collect() for s in family.samples}
    assert len(series) == MAX_CAMERA_LABELS + 1
