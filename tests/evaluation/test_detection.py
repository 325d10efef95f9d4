"""Detection scoring (box convention, greedy matching with ignores, AP, height buckets, gt.jsonl checks)
and `facewatch eval detect` end to end on real labelled photos.

The expected figures of the unit tests are worked out by hand in the comments.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from tests.realdata import shared_data
from worker.cli.main import main
from worker.config import DetectorConfig
from worker.errors import FacewatchError
from worker.evaluation.detection import (
    FALSE_POSITIVE,
    IGNORED,
    TRUE_POSITIVE,
    ImageTruth,
    average_precision,
    box_edges,
    height_bucket,
    iou_matrix,
    match_image,
    precision_recall,
    read_ground_truth,
    run_detector,
    score_detections,
)
from worker.samples import sample_paths
from worker.vision.boxes import Box
from worker.vision.detectors import create_detector

TP, FP, IG = TRUE_POSITIVE, FALSE_POSITIVE, IGNORED


def edges(*boxes: Box) -> np.ndarray:
    return box_edges(list(boxes))[0]


def truth(*boxes: list[float]) -> np.ndarray:
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def test_detector_boxes_are_inclusive_and_truth_boxes_exclusive():
    # Box(0, 0, 9, 9) covers pixels 0..9: the same 10x10 square as ground truth [0, 0, 10, 10].
    assert iou_matrix(edges(Box(0, 0, 9, 9)), truth([0, 0, 10, 10]))[0, 0] == 1.0
    # Half of it overlaps [5, 0, 15, 10]: 50 / (100 + 100 - 50).
    assert iou_matrix(edges(Box(0, 0, 9, 9)), truth([5, 0, 15, 10]))[0, 0] == pytest.approx(1 / 3)
    assert iou_matrix(edges(Box(0, 0, 9, 9)), truth([10, 0, 20, 10]))[0, 0] == 0.0  # touching, no shared pixel


def test_iou_matrix_agrees_with_box_iou():
    rng = np.random.default_rng(7)
    corners = rng.integers(0, 60, size=(40, 2))
    sizes = rng.integers(1, 40, size=(40, 2))
    boxes = [Box(int(x), int(y), int(x + w - 1), int(y + h - 1)) for (x, y), (w, h) in zip(corners, sizes, strict=True)]
    a, b = boxes[:15], boxes[15:]
    expected = np.array([[p.iou(q) for q in b] for p in a])
    np.testing.assert_allclose(iou_matrix(edges(*a), edges(*b)), expected, rtol=1e-12)
    assert iou_matrix(edges(*a), truth()).shape == (15, 0)


def test_matching_is_greedy_by_score_and_each_face_is_matched_once():
    faces = truth([0, 0, 10, 10], [20, 0, 30, 10])
    detections = edges(
        Box(0, 0, 5, 9, 0.9),  # IoU 60/100 with face 0: first by score, so it takes face 0
        Box(0, 0, 9, 9, 0.5),  # IoU 1 with face 0, but face 0 is taken: a duplicate
        Box(20, 0, 24, 9, 0.7),  # IoU 50/100 with face 1: exactly the threshold counts
    )
    scores = np.array([0.9, 0.5, 0.7])
    outcome, matched = match_image(detections, scores, faces, np.array([False, False]))
    assert outcome.tolist() == [TP, FP, TP]
    assert matched.tolist() == [True, True]
    just_under = edges(Box(20, 0, 23, 9))  # IoU 40/100
    outcome, matched = match_image(just_under, np.array([1.0]), faces, np.array([False, False]))
    assert outcome.tolist() == [FP] and matched.tolist() == [False, False]


def test_a_detection_takes_the_best_overlapping_free_face():
    faces = truth([0, 0, 10, 10], [2, 0, 12, 10])
    # IoU 80/120 with face 0, 100/100 with face 1.
    outcome, matched = match_image(edges(Box(2, 0, 11, 9)), np.array([1.0]), faces, np.array([False, False]))
    assert outcome.tolist() == [TP] and matched.tolist() == [False, True]


def test_ignored_faces_are_neither_hits_nor_misses_and_absorb_one_detection():
    faces = truth([0, 0, 10, 10], [40, 0, 50, 10])
    ignore = np.array([True, False])
    detections = edges(Box(0, 0, 9, 9, 0.9), Box(0, 0, 9, 8, 0.8), Box(100, 0, 109, 9, 0.7))
    scores = np.array([0.9, 0.8, 0.7])
    outcome, matched = match_image(detections, scores, faces, ignore)
    # The first lands on the ignored face; the second is a duplicate on it (IoU 0.9), so a false
    # positive like any duplicate; the third finds nothing. Face 1 is missed.
    assert outcome.tolist() == [IG, FP, FP]
    assert matched.tolist() == [True, False]
    boxes = [Box(0, 0, 9, 9, 0.9), Box(0, 0, 9, 8, 0.8), Box(100, 0, 109, 9, 0.7)]
    image = _image(faces, ignore)
    score = score_detections([image], [boxes])
    assert (score.faces, score.ignored_faces, score.detections) == (1, 1, 3)
    assert (score.true_positives, score.false_positives, score.ignored_detections) == (0, 2, 1)
    assert score.recall == 0.0 and score.precision == 0.0 and score.average_precision == 0.0


def test_a_counted_face_wins_over_an_ignored_one():
    faces = truth([0, 0, 10, 10], [1, 0, 11, 10])
    ignore = np.array([False, True])
    # IoU 1 with the ignored face, 90/110 with the counted one: credited to the counted face.
    outcome, matched = match_image(edges(Box(1, 0, 10, 9)), np.array([1.0]), faces, ignore)
    assert outcome.tolist() == [TP] and matched.tolist() == [True, False]


def test_faces_without_area_are_ignored(tmp_path):
    dataset = _dataset(tmp_path, [{"boxes": [[0, 0, 0, 0], [5, 5, 25, 30]], "ignore": []}])
    (image,) = read_ground_truth(dataset)
    assert image.ignore.tolist() == [True, False]
    score = score_detections([image], [[]])
    assert (score.faces, score.ignored_faces, score.recall) == (1, 1, 0.0)


def test_average_precision_by_hand():
    # 3 faces; by score: hit, miss, hit, miss -> (recall, precision) = (1/3, 1), (1/3, 1/2), (2/3, 2/3), (2/3, 1/2).
    # All-points interpolation: precision 1 on recall (0, 1/3], 2/3 on (1/3, 2/3]: AP = 1/3 + 2/9 = 5/9.
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    outcomes = np.array([TP, FP, TP, FP], dtype=np.int8)
    recall, precision, thresholds = precision_recall(scores, outcomes, 3)
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 1 / 2])
    assert thresholds.tolist() == [0.9, 0.8, 0.7, 0.6]
    assert average_precision(recall, precision) == pytest.approx(5 / 9)
    # A detection on an ignored face changes nothing, wherever its score falls.
    with_ignored = precision_recall(np.append(scores, 0.85), np.append(outcomes, IG), 3)
    assert average_precision(*with_ignored[:2]) == pytest.approx(5 / 9)
    # Input order does not matter: the curve is by score.
    shuffled = precision_recall(scores[::-1].copy(), outcomes[::-1].copy(), 3)
    assert average_precision(*shuffled[:2]) == pytest.approx(5 / 9)


def test_average_precision_takes_the_best_precision_to_the_right():
    # miss, hit, hit on 2 faces: (0, 0), (1/2, 1/2), (1, 2/3); precision 2/3 holds on all of (0, 1].
    recall, precision, _ = precision_recall(np.array([0.9, 0.8, 0.7]), np.array([FP, TP, TP]), 2)
    assert average_precision(recall, precision) == pytest.approx(2 / 3)
    # Same detections, 4 faces: recall stops at 1/2, and the unreached half adds nothing: 1/2 * 2/3.
    recall, precision, _ = precision_recall(np.array([0.9, 0.8, 0.7]), np.array([FP, TP, TP]), 4)
    assert average_precision(recall, precision) == pytest.approx(1 / 3)


def test_equal_scores_are_one_point_of_the_curve():
    # A hit and a miss at the same score: accepted together, recall 1 at precision 1/2, in either order.
    for outcomes in ([TP, FP], [FP, TP]):
        recall, precision, _ = precision_recall(np.array([0.5, 0.5]), np.array(outcomes), 1)
        assert recall.tolist() == [1.0] and precision.tolist() == [0.5]
        assert average_precision(recall, precision) == 0.5


def test_no_detections_and_no_faces():
    recall, precision, _ = precision_recall(np.zeros(0), np.zeros(0, dtype=np.int8), 5)
    assert len(recall) == 0 and average_precision(recall, precision) == 0.0
    recall, precision, _ = precision_recall(np.array([0.5]), np.array([FP]), 0)
    assert math.isnan(average_precision(recall, precision))


def test_height_buckets_are_half_open():
    heights = np.array([0.0, 15.9, 16.0, 31.99, 32.0, 63.9, 64.0, 500.0])
    assert height_bucket(heights).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_recall_by_height(tmp_path):
    # Heights 10 (missed), 20 (found), 40 (found), 40 (missed), 100 (found), and an ignored 20 px face.
    boxes = [[0, 0, 10, 10], [20, 0, 40, 20], [50, 0, 90, 40], [100, 0, 140, 40], [0, 50, 100, 150], [200, 0, 220, 20]]
    dataset = _dataset(tmp_path, [{"boxes": boxes, "ignore": [5]}, {"boxes": [[0, 0, 50, 50]]}])
    first, second = read_ground_truth(dataset)
    found = [Box(20, 0, 39, 19, 0.9), Box(50, 0, 89, 39, 0.8), Box(0, 50, 99, 149, 0.7), Box(200, 0, 219, 19, 0.6)]
    # The second image could not be read: its face counts nowhere.
    score = score_detections([first, second], [found, None])
    assert score.images == 1 and score.faces == 5 and score.ignored_faces == 1
    assert score.faces_by_height == {"<16": 1, "16-32": 1, "32-64": 2, ">=64": 1}
    assert score.recall_by_height == {"<16": 0.0, "16-32": 1.0, "32-64": 0.5, ">=64": 1.0}
    assert (score.true_positives, score.false_positives, score.ignored_detections) == (3, 0, 1)
    assert score.recall == pytest.approx(3 / 5) and score.precision == 1.0
    assert score.average_precision == pytest.approx(3 / 5)
    summary = score.summary()
    assert summary["recall_by_height"]["32-64"] == 0.5 and json.dumps(summary)


# --- gt.jsonl ---


def _dataset(tmp_path: Path, records: list[dict]) -> Path:
    """A dataset folder with gt.jsonl and a copy of a real portrait (512x600) for each record."""
    portrait = sample_paths()["Grace Hopper"]
    (tmp_path / "images").mkdir(exist_ok=True)
    lines = []
    for index, record in enumerate(records):
        name = f"images/{index}.jpg"
        shutil.copy(portrait, tmp_path / name)
        lines.append(json.dumps({"image": name, **record}))
    (tmp_path / "gt.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def _image(faces: np.ndarray, ignore: np.ndarray) -> ImageTruth:
    return ImageTruth(path=sample_paths()["Grace Hopper"], line=1, boxes=faces, ignore=ignore)


def test_reads_lines_sizes_and_limit(tmp_path):
    dataset = _dataset(tmp_path, [{"width": 512, "height": 600, "boxes": [[1, 2, 30, 40]]}, {"boxes": []}])
    first, second = read_ground_truth(dataset)
    assert first.path == dataset / "images/0.jpg" and (first.width, first.height) == (512, 600)
    assert first.boxes.tolist() == [[1, 2, 30, 40]] and first.heights.tolist() == [38]
    assert second.boxes.shape == (0, 4) and (second.width, second.height) == (None, None)
    assert len(read_ground_truth(dataset, limit=1)) == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "gt.jsonl:2: not valid JSON"),
        ("[1, 2]", "gt.jsonl:2: expected a JSON object, got list"),
        ('{"boxes": []}', 'gt.jsonl:2: missing "image"'),
        ('{"image": "images/none.jpg", "boxes": []}', "gt.jsonl:2: image .*none.jpg not found"),
        ('{"image": "images/0.jpg"}', 'gt.jsonl:2: missing "boxes"'),
        ('{"image": "images/0.jpg", "boxes": [[1, 2, 3]]}', r"gt.jsonl:2: box 0 is not \[left, top, right, bottom\]"),
        ('{"image": "images/0.jpg", "boxes": [[1, 2, 3, "4"]]}', "gt.jsonl:2: box 0 is not"),
        ('{"image": "images/0.jpg", "boxes": [[0, 0, 5, 5], [9, 2, 3, 4]]}', "gt.jsonl:2: box 1 .* right < left"),
        ('{"image": "images/0.jpg", "boxes": [[0, 0, 5, 5]], "ignore": [1]}', "gt.jsonl:2: ignore index 1 is not"),
        ('{"image": "images/0.jpg", "boxes": [], "ignore": "all"}', 'gt.jsonl:2: "ignore" must be a list'),
        ('{"image": "images/0.jpg", "boxes": [], "width": 0}', 'gt.jsonl:2: "width" must be a positive integer'),
        ('{"image": "images/0.jpg", "boxes": []}', "gt.jsonl:2: image .*0.jpg is also on line 1"),
    ],
)
def test_malformed_lines_name_the_line(tmp_path, line, message):
    dataset = _dataset(tmp_path, [{"boxes": [[0, 0, 5, 5]]}])
    with (dataset / "gt.jsonl").open("a") as gt:
        gt.write(line + "\n")
    with pytest.raises(FacewatchError, match=message):
        read_ground_truth(dataset)


def test_missing_or_empty_ground_truth(tmp_path):
    with pytest.raises(FacewatchError, match=r"cannot read .*gt\.jsonl"):
        read_ground_truth(tmp_path)
    (tmp_path / "gt.jsonl").write_text("\n\n")
    with pytest.raises(FacewatchError, match=r"gt\.jsonl: no images listed"):
        read_ground_truth(tmp_path)


# --- running a detector over a dataset ---


@pytest.fixture(scope="module")
def haar():
    return create_detector(DetectorConfig(name="haar"))


def test_run_detector_reports_unreadable_images_and_goes_on(tmp_path, haar):
    dataset = _dataset(tmp_path, [{"boxes": [[0, 0, 5, 5]]}, {"boxes": []}, {"boxes": []}])
    (dataset / "images/1.jpg").write_bytes(b"not an image")
    truths = read_ground_truth(dataset)
    unreadable = []
    run = run_detector(
        haar.detect_batch,
        truths,
        dataset / "gt.jsonl",
        batch=2,
        on_unreadable=lambda image, error: unreadable.append((image.line, str(error))),
        progress=False,
    )
    assert [line for line, _ in unreadable] == [2] and "1.jpg" in unreadable[0][1]
    assert run.detections[1] is None
    assert run.detections[0] == run.detections[2] and len(run.detections[0]) >= 1  # Grace Hopper's face
    assert run.seconds > 0 and run.images_per_second > 0


def test_run_detector_stops_on_a_size_the_line_contradicts(tmp_path, haar):
    dataset = _dataset(tmp_path, [{"boxes": [], "width": 100, "height": 100}])
    truths = read_ground_truth(dataset)
    with pytest.raises(FacewatchError, match=r"gt.jsonl:1: .*0.jpg is 512x600 pixels, the line says 100x100"):
        run_detector(haar.detect_batch, truths, dataset / "gt.jsonl", progress=False)


def test_shared_detection_sets_parse():
    root = shared_data() / "detection"
    wider = read_ground_truth(root / "wider_val_subset200")
    assert len(wider) == 200
    assert sum(len(image.boxes) for image in wider) == 4372
    # 39 faces marked invalid by WIDER, and 2 boxes without area.
    assert sum(int(image.ignore.sum()) for image in wider) == 41
    dlib_faces = read_ground_truth(root / "dlib_examples_faces")
    assert len(dlib_faces) == 9 and sum(len(image.boxes) for image in dlib_faces) == 43


# --- facewatch eval detect ---


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def dlib_faces():
    """dlib's examples/faces: 9 PASCAL VOC photos, 43 faces, all 32 px tall or more."""
    return shared_data() / "detection" / "dlib_examples_faces"


def test_two_detectors_in_one_run_with_json_and_plot(capsys, tmp_path, dlib_faces):
    plot = tmp_path / "pr.png"
    status, out, err = run_cli(
        capsys, "eval", "detect", "--dataset", str(dlib_faces), "--detector", "hog", "--detector", "haar",
        "--json", "--quiet", "--plot", str(plot),
    )  # fmt: skip
    assert status == 0
    hog, haar = (json.loads(line) for line in out.splitlines())
    assert (hog["detector"], haar["detector"]) == ("hog", "haar")
    for record in (hog, haar):
        assert (record["images"], record["faces"], record["ignored_faces"], record["unreadable_images"]) == (
            9,
            43,
            0,
            0,
        )
        assert record["faces_by_height"] == {"<16": 0, "16-32": 0, "32-64": 35, ">=64": 8}
        assert record["recall_by_height"]["<16"] is None
        assert (
            record["true_positives"] + record["false_positives"] + record["ignored_detections"] == record["detections"]
        )
        assert record["recall"] == pytest.approx(record["true_positives"] / 43, abs=1e-6)
        assert record["images_per_second"] > 0
    # Measured: HOG finds all 43 without a false detection; the Haar cascade about 80% with some.
    assert hog["recall"] >= 0.95 and hog["precision"] >= 0.95 and hog["average_precision"] >= 0.95
    assert 0.5 < haar["recall"] < hog["recall"] and haar["average_precision"] < hog["average_precision"]
    assert f"precision-recall curves: {plot}" in err
    assert matplotlib.image.imread(plot).shape[2] in (3, 4)


def test_table_and_the_configured_detector(capsys, monkeypatch, dlib_faces):
    monkeypatch.setenv("FACEWATCH_DETECTOR__NAME", "haar")
    status, out, _ = run_cli(capsys, "eval", "detect", "--dataset", str(dlib_faces), "--limit", "2", "--quiet")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "face detection on dlib_examples_faces: 2 images, 13 faces (0 ignored), IoU >= 0.5"
    assert lines[1] == "faces by height: <16 px 0, 16-32 px 0, 32-64 px 13, >=64 px 0"
    assert lines[2].split()[:5] == ["detector", "AP", "recall", "precision", "detections"]
    assert len(lines) == 5 and lines[4].split()[0] == "haar"


def _portrait_dataset(tmp_path, extra_line: str = "") -> str:
    shutil.copy(sample_paths()["Grace Hopper"], tmp_path / "hopper.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    lines = [
        json.dumps({"image": "hopper.jpg", "width": 512, "height": 600, "boxes": [[170, 110, 340, 330]]}),
        json.dumps({"image": "broken.jpg", "boxes": [[0, 0, 50, 50], [60, 0, 110, 50]]}),
    ]
    (tmp_path / "gt.jsonl").write_text("\n".join([*lines, extra_line]) + "\n")
    return str(tmp_path)


def test_an_unreadable_image_is_reported_once_and_left_out(capsys, tmp_path):
    dataset = _portrait_dataset(tmp_path)
    status, out, err = run_cli(
        capsys, "eval", "detect", "--dataset", dataset, "--detector", "haar", "--detector", "hog", "--json", "--quiet"
    )
    assert status == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["images"], r["faces"], r["unreadable_images"]) for r in records] == [(1, 1, 1), (1, 1, 1)]
    (line,) = err.splitlines()
    assert line.startswith("facewatch: error: ") and "broken.jpg" in line and "gt.jsonl:2" in line


def test_a_malformed_line_fails_with_one_line_naming_it(capsys, tmp_path):
    dataset = _portrait_dataset(tmp_path, '{"image": "hopper2.jpg", "boxes": []}')
    status, out, err = run_cli(capsys, "eval", "detect", "--dataset", dataset, "--quiet")
    assert status == 1 and out == ""
    assert err == f"facewatch: error: {tmp_path}/gt.jsonl:3: image {tmp_path}/hopper2.jpg not found\n"


def test_a_plot_in_a_missing_folder_fails_before_detecting(capsys, tmp_path):
    dataset = _portrait_dataset(tmp_path)
    status, out, err = run_cli(capsys, "eval", "detect", "--dataset", dataset, "--plot", f"{tmp_path}/no/pr.png")
    assert status == 1 and out == ""
    assert err == f"facewatch: error: --plot {tmp_path}/no/pr.png: folder {tmp_path}/no does not exist\n"


def test_bad_options_are_usage_errors(capsys, tmp_path):
    cases = {
        "--detector=nope": "argument --detector: invalid choice: 'nope'",
        "--limit=0": "argument --limit: expected a positive integer, got '0'",
        "--iou=1.5": "argument --iou: expected a number in (0, 1], got '1.5'",
    }
    for option, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", "detect", "--dataset", str(tmp_path), option])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
