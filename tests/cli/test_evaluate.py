"""`facewatch eval detect` end to end: real detectors on real labelled photos, and bad datasets."""

from __future__ import annotations

import json
import shutil

import matplotlib.image
import pytest

from tests.realdata import shared_data
from worker.cli.main import main
from worker.samples import sample_paths


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
