"""`facewatch detect|embed|compare` on real faces and on bad input."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios

import cv2
import numpy as np
import pytest

from tests.infra.bombs import jpeg_claiming, png_claiming
from tests.realdata import has_shared_data, lfw_images, shared_data
from worker.cli.main import main
from worker.config import Settings
from worker.samples import sample_paths
from worker.vision.image import load_image


def run_cli(capsys, *argv: str) -> tuple[int, list[dict], str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


@pytest.fixture(scope="module")
def portrait():
    return sample_paths()["Grace Hopper"]


@pytest.fixture(scope="module")
def portrait_faces(portrait):
    return load_image(portrait)


def test_detect_prints_one_line_per_face(capsys, portrait):
    status, records, err = run_cli(capsys, "detect", "--detector", "hog", str(portrait))
    assert status == 0 and err == "detect: 1 image, 1 face, 0 without a face, 0 unreadable\n"
    assert len(records) == 1
    left, top, right, bottom = records[0]["box"]
    assert records[0]["image"] == str(portrait) and 0 <= left < right and 0 <= top < bottom
    # Named as what it is: a HOG SVM margin is not a probability, so it is not called "score".
    assert records[0]["detector"] == "hog" and isinstance(records[0]["detector_score"], float)
    assert set(records[0]) == {"image", "box", "detector", "detector_score"}  # hog finds no landmarks


def test_detect_with_retinaface_prints_five_landmarks(capsys, portrait):
    status, records, err = run_cli(
        capsys, "detect", "--detector", "retinaface", "--detector-device", "cpu", "--quiet", str(portrait)
    )
    assert status == 0 and err == "" and len(records) == 1
    left, top, right, bottom = records[0]["box"]
    points = records[0]["landmarks"]
    assert len(points) == 5 and all(left <= x <= right + 1 and top <= y <= bottom + 1 for x, y in points)
    assert records[0]["detector"] == "retinaface" and 0.99 < records[0]["detector_score"] <= 1
    status, records, _ = run_cli(capsys, "embed", "--detector", "retinaface", "--detector-device", "cpu", str(portrait))
    assert status == 0 and len(records) == 1 and len(records[0]["embedding"]) == 128


@pytest.mark.parametrize("detector", ["hog", "haar"])
def test_each_detector_finds_both_people(capsys, detector):
    data = shared_data()
    status, records, _ = run_cli(capsys, "detect", "--detector", detector, str(data / "stills" / "two_people.jpg"))
    assert status == 0 and len(records) == 2
    centres = sorted((r["box"][0] + r["box"][2]) / 2 for r in records)
    assert centres[0] < 563 < centres[1]  # one face in each half of the 1126-pixel-wide photo


def test_embed_gives_128_floats_per_face(capsys, portrait):
    status, records, _ = run_cli(capsys, "embed", str(portrait), str(portrait))
    assert status == 0 and len(records) == 2
    assert len(records[0]["embedding"]) == 128
    assert records[0]["embedding"] == records[1]["embedding"]
    assert 0.5 < np.linalg.norm(records[0]["embedding"]) < 3.0


def test_compare_same_and_different_people(capsys):
    if has_shared_data():
        folder = shared_data() / "lfw" / "images" / "George_W_Bush"
        same_a, same_b = sorted(folder.glob("*.jpg"))[:2]
        other = lfw_images(1)[0]
    else:
        pytest.skip("needs two photos of one person from ../shared/data/lfw")
    status, (record,), _ = run_cli(capsys, "compare", str(same_a), str(same_b))
    assert status == 0 and record["same"] is True and record["distance"] < 0.6 and record["threshold"] == 0.6
    status, (record,), _ = run_cli(capsys, "compare", str(same_a), str(other))
    assert status == 0 and record["same"] is False and record["distance"] > 0.6


def test_compare_pairs_every_face_of_one_image_with_every_face_of_the_other(capsys):
    """Obama against a photo of Obama and Biden: the old compare took the largest face of each and said "not
    the same"; every pair is compared now, nearest first, with its boxes and the threshold."""
    stills = shared_data() / "stills"
    obama, both = stills / "obama.jpg", stills / "two_people.jpg"
    status, records, _ = run_cli(capsys, "compare", str(obama), str(both))
    assert status == 0 and len(records) == 2
    nearest, other = records
    assert nearest["same"] is True and other["same"] is False and nearest["distance"] < 0.6 < other["distance"]
    assert (nearest["status"], other["status"]) == ("match", "non_match")
    assert {nearest["image_a"], nearest["image_b"]} == {str(obama), str(both)}
    assert nearest["box_a"] == other["box_a"] and nearest["box_b"] != other["box_b"]
    centre = (nearest["box_b"][0] + nearest["box_b"][2]) / 2
    assert centre < 563  # Obama stands in the left half of the 1126-pixel-wide photo
    assert all(record["threshold"] == 0.6 for record in records)
    status, records, _ = run_cli(capsys, "compare", "--threshold", "0.3", str(obama), str(both))
    assert status == 0 and [r["same"] for r in records] == [False, False] and records[0]["threshold"] == 0.3


def test_compare_without_a_face_fails_with_one_line(capsys, tmp_path, portrait):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 127, np.uint8))
    status, records, err = run_cli(capsys, "compare", str(portrait), str(blank))
    assert status == 1 and records == []
    assert err.strip() == f"facewatch: error: {blank}: no face found"


def _variants(tmp_path, face: np.ndarray) -> dict[str, str]:
    bgr = np.ascontiguousarray(face[:, :, ::-1])
    paths = {}
    paths["gray"] = str(tmp_path / "gray.png")
    cv2.imwrite(paths["gray"], cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    paths["rgba"] = str(tmp_path / "rgba.png")
    cv2.imwrite(paths["rgba"], np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)]))
    paths["16bit"] = str(tmp_path / "sixteen.png")
    cv2.imwrite(paths["16bit"], bgr.astype(np.uint16) * 257)
    return paths


def test_grayscale_rgba_and_16bit_images_are_handled(capsys, tmp_path, portrait, portrait_faces):
    _, (reference,), _ = run_cli(capsys, "detect", str(portrait))
    paths = _variants(tmp_path, portrait_faces)
    status, records, err = run_cli(capsys, "detect", "--quiet", paths["gray"], paths["rgba"], paths["16bit"])
    assert status == 0 and err == ""
    by_image = {record["image"]: record for record in records}
    assert set(by_image) == set(paths.values())
    for name in ("rgba", "16bit"):  # same pixels, so the very same box
        assert by_image[paths[name]]["box"] == reference["box"]
    gray_box = by_image[paths["gray"]]["box"]
    assert max(abs(a - b) for a, b in zip(gray_box, reference["box"], strict=True)) < 20


@pytest.mark.parametrize("detector", ["hog", "haar"])
def test_one_pixel_image_has_no_faces(capsys, tmp_path, detector):
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((1, 1, 3), np.uint8))
    no_face = [{"image": str(tiny), "box": None, "status": "no_face"}]
    status, records, err = run_cli(capsys, "detect", "--detector", detector, str(tiny))
    assert (status, records, err) == (0, no_face, "detect: 1 image, 0 faces, 1 without a face, 0 unreadable\n")
    status, records, err = run_cli(capsys, "embed", "--detector", detector, "--quiet", str(tiny))
    assert (status, records, err) == (0, no_face, "")


def test_bad_files_fail_with_one_line_each_and_the_rest_is_processed(capsys, tmp_path, portrait):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all\n")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(portrait.read_bytes()[:200])
    missing = tmp_path / "missing.jpg"
    status, records, err = run_cli(capsys, "detect", str(empty), str(text), str(portrait), str(truncated), str(missing))
    assert status == 1
    assert [record["image"] for record in records] == [str(portrait)]
    *lines, summary = err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("facewatch: error: ") for line in lines)
    assert str(empty) in lines[0] and "empty" in lines[0]
    assert str(text) in lines[1] and str(truncated) in lines[2] and str(missing) in lines[3]
    assert summary == "detect: 5 images, 1 face, 0 without a face, 4 unreadable"


def test_config_errors_name_the_key(capsys, tmp_path, monkeypatch, portrait):
    monkeypatch.setenv("FACEWATCH_EMBEDDER__MAX_BATCH", "zero")
    status, _, err = run_cli(capsys, "embed", str(portrait))
    assert status == 2 and "embedder.max_batch" in err
    monkeypatch.delenv("FACEWATCH_EMBEDDER__MAX_BATCH")
    config = tmp_path / "bad.yaml"
    config.write_text("detector:\n  nmae: hog\n")
    status, _, err = run_cli(capsys, "--config", str(config), "detect", str(portrait))
    assert status == 2 and "detector.nmae: unknown key" in err


def test_real_process_exit_status_and_streams(tmp_path, portrait):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = subprocess.run(
        [sys.executable, "-m", "worker", "detect", str(bad), str(portrait)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 1 and json.loads(result.stdout)["image"] == str(portrait)
    error, summary = result.stderr.splitlines()
    assert str(bad) in error and summary == "detect: 2 images, 1 face, 0 without a face, 1 unreadable"
    assert "\r" not in result.stderr  # stderr is a pipe here: no progress bar, so no carriage returns


@pytest.mark.parametrize("detector", ["hog", "haar"])
def test_detectors_are_safe_to_share_between_threads(detector):
    from concurrent.futures import ThreadPoolExecutor

    from worker.config import DetectorConfig
    from worker.vision.detectors import create_detector

    images = [load_image(path) for path in lfw_images(40)]
    face_detector = create_detector(DetectorConfig(name=detector))
    serial = [face_detector.detect(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(face_detector.detect, images))
    assert threaded == serial


def test_images_over_the_pixel_budget_are_refused_before_decoding(capsys, tmp_path, monkeypatch, portrait):
    # Issue 16: a 1 MB 7900x7900 JPEG took 40 s and 3.3 GB in `detect`; a 20000x20000 PNG failed
    # with OpenCV's assertion text.
    bomb, huge = tmp_path / "bomb.jpg", tmp_path / "huge.png"
    bomb.write_bytes(jpeg_claiming(7900, 7900))
    huge.write_bytes(png_claiming(20000, 20000))
    status, records, err = run_cli(capsys, "detect", str(bomb), str(huge), str(portrait))
    assert status == 1 and [r["image"] for r in records] == [str(portrait)]
    limit = Settings().images.max_pixels
    assert err.splitlines() == [
        f"facewatch: error: {bomb}: 7900x7900 is over the limit of {limit} pixels (images.max_pixels)",
        f"facewatch: error: {huge}: 20000x20000 is over the limit of {limit} pixels (images.max_pixels)",
        "detect: 3 images, 1 face, 0 without a face, 2 unreadable",
    ]
    monkeypatch.setenv("FACEWATCH_IMAGES__MAX_PIXELS", "1000")  # the budget is a setting
    status, records, err = run_cli(capsys, "detect", str(portrait))
    assert status == 1 and records == [] and "over the limit of 1000 pixels (images.max_pixels)" in err


def test_file_names_that_are_not_utf8_come_out_as_valid_json(tmp_path, portrait):
    # A Latin-1 name: Python reads its byte 0xE9 as the lone surrogate U+DCE9, which json.dumps wrote as
    # "\udce9": invalid Unicode that strict readers reject. Now it is written as the text \xe9.
    latin1 = tmp_path / os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(portrait, latin1)
    result = subprocess.run(
        [sys.executable, "-m", "worker", "detect", "--detector", "hog", str(latin1)],
        capture_output=True,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.decode("utf-8", errors="strict"))
    assert record["image"] == f"{tmp_path}/caf\\xe9.jpg"
    record["image"].encode("utf-8")  # strict: no lone surrogates left


def test_folders_are_searched_recursively_for_images_and_faceless_images_are_reported(capsys, tmp_path, portrait):
    folder = tmp_path / "photos"
    (folder / "holiday" / "day 2").mkdir(parents=True)
    shutil.copy(portrait, folder / "hopper.JPG")  # suffixes in any case
    shutil.copy(portrait, folder / "holiday" / "day 2" / "hopper again.jpg")
    cv2.imwrite(str(folder / "holiday" / "wall.png"), np.full((120, 160, 3), 90, np.uint8))
    (folder / "notes.txt").write_text("not an image, and not tried: only image files are taken from folders\n")
    (folder / "holiday" / "clip.mp4").write_bytes(b"\x00" * 64)
    alone = tmp_path / "single.jpg"
    shutil.copy(portrait, alone)
    status, records, err = run_cli(capsys, "detect", "--detector", "hog", str(folder), str(alone))
    assert status == 0
    faces = [r["image"] for r in records if r["box"] is not None]
    assert faces == [str(folder / "holiday" / "day 2" / "hopper again.jpg"), str(folder / "hopper.JPG"), str(alone)]
    assert [r for r in records if r["box"] is None] == [
        {"image": str(folder / "holiday" / "wall.png"), "box": None, "status": "no_face"}
    ]
    assert err == "detect: 4 images, 3 faces, 1 without a face, 0 unreadable, 2 other files in the folders skipped\n"
    status, records, _ = run_cli(capsys, "embed", "--quiet", str(folder / "holiday"))
    assert status == 0 and [len(r["embedding"]) if r["box"] else r["status"] for r in records] == [128, "no_face"]


def _stderr_of(argv: list[str], terminal: bool) -> str:
    """Run facewatch with stderr on a pseudo-terminal (as a person sees it) or on a pipe (as a log does)."""
    if not terminal:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stderr
    leader, follower = pty.openpty()
    # A terminal has a size; tqdm draws a bar as wide as it (a fresh pty is 0 columns wide).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=600) == 0
    finally:
        os.close(leader)
    # The terminal turns each \n into \r\n; only a bare \r is a bar's redraw.
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_a_progress_bar_only_on_a_terminal_and_never_with_quiet(tmp_path, portrait):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        shutil.copy(portrait, folder / f"p{i}.jpg")
    argv = [sys.executable, "-m", "worker", "detect", "--detector", "hog", str(folder)]
    on_terminal = _stderr_of(argv, terminal=True)
    assert "\r" in on_terminal and "3/3" in on_terminal and "detect: 3 images, 3 faces" in on_terminal
    logged = _stderr_of(argv, terminal=False)
    assert logged == "detect: 3 images, 3 faces, 0 without a face, 0 unreadable\n"
    quiet = _stderr_of([*argv, "--quiet"], terminal=True)
    assert "\r" not in quiet and "3/3" not in quiet and "detect:" not in quiet
