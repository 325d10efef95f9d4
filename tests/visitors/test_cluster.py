"""Online visitor clustering, Chinese whispers and the cluster scores, on small cases worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from worker.evaluation.cluster import cluster_scores
from worker.visitors.cluster import OnlineClusters, chinese_whispers, neighbour_graph, online_labels


def _point(direction: int, offset: float = 0.0) -> np.ndarray:
    """A 128-d vector along axis ``direction`` with a small step ``offset`` along the last axis."""
    v = np.zeros(128, np.float32)
    v[direction] = 1.0
    v[127] = offset
    return v


def _ids():
    counter = iter(range(1000))
    return lambda: f"v{next(counter)}"


def test_a_track_joins_the_nearest_visitor_within_the_threshold_else_starts_one():
    clusters = OnlineClusters(threshold=0.5, merge_threshold=0.1, new_id=_ids())
    first = clusters.assign(_point(0), "cam", 0, 1)
    near = clusters.assign(_point(0, 0.3), "cam", 10, 11)
    far = clusters.assign(_point(1), "cam", 20, 21)
    assert (first.visitor_id, first.new) == ("v0", True)
    assert (near.visitor_id, near.new) == ("v0", False) and near.distance == pytest.approx(0.3)
    assert (far.visitor_id, far.new) == ("v1", True)
    # The centroid is the mean of the two tracks.
    assert clusters.get("v0").centroid[127] == pytest.approx(0.15)


def test_two_faces_at_once_on_one_camera_are_two_visitors():
    clusters = OnlineClusters(threshold=0.5, merge_threshold=0.1, new_id=_ids())
    clusters.assign(_point(0), "cam", 0, 10)
    twin = clusters.assign(_point(0, 0.05), "cam", 5, 12)  # overlaps the first track in time
    elsewhere = clusters.assign(_point(0, 0.05), "cam-2", 5, 12)  # another camera: may be the same person
    assert twin.new and twin.visitor_id == "v1"
    assert not elsewhere.new


def test_visitors_that_converge_are_merged_into_the_older_one():
    clusters = OnlineClusters(threshold=0.5, merge_threshold=0.3, new_id=_ids())
    steps = []
    # v0 at 0.0, v1 at 0.6 (too far to join); tracks in between pull v1 towards v0, one at a time:
    # v1's centroid goes 0.525, (v0 to 0.1), 0.467, 0.425, 0.4, 0.383: within 0.3 of v0, and they merge.
    for step, offset in enumerate((0.0, 0.6, 0.45, 0.2, 0.35, 0.3, 0.3, 0.3)):
        a = clusters.assign(_point(0, offset), "cam", step * 10, step * 10 + 1)
        steps.append((a.visitor_id, a.merged))
    assert steps[:7] == [("v0", ()), ("v1", ()), ("v1", ()), ("v0", ()), ("v1", ()), ("v1", ()), ("v1", ())]
    assert steps[7] == ("v0", ("v1",))  # the track joined v1, which merged into the older v0
    assert [c.visitor_id for c in clusters.visitors()] == ["v0"]
    assert clusters.get("v0").weight == 8


def test_visitors_seen_at_the_same_time_are_never_merged():
    clusters = OnlineClusters(threshold=0.5, merge_threshold=0.3, new_id=_ids())
    clusters.assign(_point(0, 0.0), "cam", 0, 10)
    clusters.assign(_point(0, 0.6), "cam", 5, 15)  # on the same camera at the same time as v0
    for step in range(6):
        assert clusters.assign(_point(0, 0.4), "cam-2", 100 + step, 100.5 + step).merged == ()
    assert len(clusters) == 2


def test_removed_visitors_leave_the_index():
    clusters = OnlineClusters(threshold=0.5, new_id=_ids())
    clusters.assign(_point(0), "cam", 0, 1)
    assert clusters.remove("v0") and len(clusters) == 0
    assert clusters.assign(_point(0), "cam", 2, 3).new


def test_chinese_whispers_finds_separate_groups_and_leaves_loners_alone():
    rng = np.random.default_rng(1)
    groups = [np.array([_point(d) + rng.normal(0, 0.02, 128).astype(np.float32) for _ in range(5)]) for d in (0, 1, 2)]
    loner = _point(3)[None]
    x = np.concatenate([*groups, loner])
    labels = chinese_whispers(x, threshold=0.5)
    assert [len(set(labels[i * 5 : i * 5 + 5])) for i in range(3)] == [1, 1, 1]
    assert len(set(labels)) == 4
    assert neighbour_graph(x, 0.5).nnz == 3 * 5 * 4  # every pair inside a group, both directions, no self-loops


def test_scores_of_a_known_clustering():
    truth = ["a", "a", "a", "b", "b"]
    predicted = [0, 0, 1, 1, 1]
    scores = cluster_scores(truth, predicted)
    # BCubed precision: items in cluster 0 (a, a) 1, 1; cluster 1 (a, b, b): 1/3, 2/3, 2/3 -> 11/15.
    assert scores["bcubed_precision"] == pytest.approx((1 + 1 + 1 / 3 + 2 / 3 + 2 / 3) / 5)
    # BCubed recall: a's: 2/3, 2/3, 1/3; b's: 1, 1.
    assert scores["bcubed_recall"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 + 1) / 5)
    # Pairs together in a cluster: (0,1) and (3,4) of the 1 + 3 predicted pairs; true pairs: 3 + 1.
    assert scores["pairwise_precision"] == pytest.approx(2 / 4)
    assert scores["pairwise_recall"] == pytest.approx(2 / 4)
    assert (scores["clusters"], scores["people"], scores["images"]) == (2, 2, 5)
    assert cluster_scores(truth, ["x", "x", "x", "y", "y"])["bcubed_f"] == 1.0


def test_online_labels_match_the_clusterer():
    x = np.array([_point(0), _point(1), _point(0, 0.1), _point(1, 0.1)])
    labels = online_labels(x, 0.5).tolist()
    assert labels[0] == labels[2] != labels[1] == labels[3]
