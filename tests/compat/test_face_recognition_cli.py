"""facewatch-face-recognition and facewatch-face-detection against face_recognition's own programs.

Both sides run in-process through click's test runner on the same folders of real images (the
wheel-shipped portraits, plus ../shared's stills and LFW faces when present), and must print the
same lines; distances may differ in the last digits (the encodings agree within 1e-5).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import click
import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

from tests.realdata import SHARED_DIR, has_shared_data, lfw_images
from worker.bench.peers import import_face_recognition
from worker.compat.face_recognition import face_detection_cli, face_recognition_cli
from worker.samples import sample_paths

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def original() -> types.SimpleNamespace:
    """face_recognition's two click commands."""
    import_face_recognition()
    from face_recognition import face_detection_cli as detection
    from face_recognition import face_recognition_cli as recognition

    return types.SimpleNamespace(recognition=recognition.main, detection=detection.main)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> types.SimpleNamespace:
    """known/: one photo per person (one with two faces, one with none); unknown/: photos to check."""
    root = tmp_path_factory.mktemp("people")
    known, unknown, small = root / "known", root / "unknown", root / "small"
    for folder in (known, unknown, small):
        folder.mkdir()
    portraits = sample_paths()
    shutil.copy(portraits["Grace Hopper"], known / "hopper.jpg")
    shutil.copy(portraits["Eileen Collins"], known / "collins.png")  # HOG finds two faces in it
    collins = np.array(PIL.Image.open(portraits["Eileen Collins"]).convert("RGB"))
    PIL.Image.fromarray(collins[300:, 300:]).save(known / "no_face.png")
    shutil.copy(portraits["Eileen Collins"], unknown / "astronaut.png")
    hopper = PIL.Image.open(portraits["Grace Hopper"])
    hopper.resize((256, 300)).save(unknown / "hopper_small.jpg")
    PIL.Image.fromarray(collins[300:, 300:]).save(unknown / "nobody.png")
    (unknown / "notes.txt").write_text("not an image, and not picked by the file pattern\n")
    hopper.resize((256, 300)).save(small / "hopper.png")
    PIL.Image.fromarray(collins[:300, 100:400]).save(small / "collins.jpg")
    if has_shared_data():
        stills = SHARED_DIR / "data" / "stills"
        for name in ("obama.jpg", "lin-manuel-miranda.png"):
            shutil.copy(stills / name, known / name)
        for name in ("two_people.jpg", "biden.jpg", "alex-lacamoire.png"):  # biden.jpg: over 1600 px, shrunk
            shutil.copy(stills / name, unknown / name)
        for path in lfw_images(4, offset=60):
            shutil.copy(path, unknown / path.name)
        for path in lfw_images(2, offset=60):
            shutil.copy(path, small / path.name)
    return types.SimpleNamespace(known=known, unknown=unknown, small=small)


def invoke(command: click.Command, *args: object) -> click.testing.Result:
    return CliRunner().invoke(command, [str(arg) for arg in args], catch_exceptions=False)


def parsed(stdout: str) -> list[list[str]]:
    return [line.split(",") for line in stdout.splitlines()]


def assert_same_results(ours: str, theirs: str) -> None:
    """The same lines; a third field (distance) within 1e-5."""
    mine, reference = parsed(ours), parsed(theirs)
    assert [row[:2] for row in mine] == [row[:2] for row in reference]
    for row, expected in zip(mine, reference, strict=True):
        assert len(row) == len(expected)
        if len(row) == 3 and expected[2] != "None":
            assert abs(float(row[2]) - float(expected[2])) <= 1e-5, (row, expected)
        elif len(row) == 3:
            assert row[2] == "None"


@pytest.fixture(scope="module")
def recognised(folders) -> str:
    """Our output for the folders, with distances."""
    result = invoke(face_recognition_cli.main, folders.known, folders.unknown, "--show-distance", "true")
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_recognition_prints_what_face_recognition_prints(original, folders, recognised):
    theirs = invoke(original.recognition, folders.known, folders.unknown, "--show-distance", "true")
    assert theirs.exit_code == 0
    assert "WARNING: More than one face found in" in recognised
    assert f"WARNING: No faces found in {folders.known / 'no_face.png'}. Ignoring file." in recognised
    assert_same_results(recognised, theirs.stdout)
    names = {row[1] for row in parsed(recognised) if len(row) > 1}
    assert {"hopper", "no_persons_found"} <= names
    plain = invoke(face_recognition_cli.main, folders.known, folders.unknown)
    assert [row[:2] for row in parsed(plain.stdout)] == [row[:2] for row in parsed(recognised)]
    assert all(len(row) <= 2 for row in parsed(plain.stdout))


def test_recognition_of_one_file_and_more_threads(original, folders, recognised):
    photo = folders.unknown / "astronaut.png"
    for tolerance in ("0.6", "0.3"):
        args = (folders.known, photo, "--show-distance", "true", "--tolerance", tolerance)
        theirs, ours = invoke(original.recognition, *args), invoke(face_recognition_cli.main, *args)
        assert ours.exit_code == 0 and parsed(ours.stdout)
        assert_same_results(ours.stdout, theirs.stdout)
    two = invoke(face_recognition_cli.main, folders.known, folders.unknown, "--cpus", "2", "--show-distance", "true")
    assert two.exit_code == 0 and two.stdout == recognised


def test_unreadable_images_are_reported_and_skipped(folders, tmp_path):
    unknown = tmp_path / "unknown"
    shutil.copytree(folders.unknown, unknown)
    clean = invoke(face_recognition_cli.main, folders.known, unknown)
    (unknown / "broken.jpg").write_bytes(b"not a jpeg")
    (unknown / "truncated.png").write_bytes((folders.unknown / "nobody.png").read_bytes()[:40])
    result = invoke(face_recognition_cli.main, folders.known, unknown)
    assert result.exit_code == 1
    errors = result.stderr.splitlines()
    assert len(errors) == 2 and all(line.startswith("ERROR: ") and "cannot read image" in line for line in errors)
    assert {unknown / "broken.jpg", unknown / "truncated.png"} == {Path(line.split(":")[1].strip()) for line in errors}
    assert result.stdout == clean.stdout  # every readable image still reported
    single = invoke(face_recognition_cli.main, folders.known, unknown / "broken.jpg")
    assert single.exit_code == 1 and "broken.jpg" not in single.stdout and "broken.jpg: cannot read" in single.stderr
    missing = invoke(face_recognition_cli.main, tmp_path / "no_such_folder", unknown)
    assert missing.exit_code == 1 and "no_such_folder is not a folder" in missing.stderr
    bad_cpus = invoke(face_recognition_cli.main, folders.known, unknown, "--cpus", "0")
    assert bad_cpus.exit_code == 2 and "--cpus" in bad_cpus.stderr


def test_detection_prints_what_face_detection_prints(original, folders):
    for folder, model in ((folders.unknown, "hog"), (folders.small, "cnn")):
        theirs = invoke(original.detection, folder, "--model", model)
        ours = invoke(face_detection_cli.main, folder, "--model", model)
        assert ours.exit_code == 0 and theirs.exit_code == 0
        assert len(parsed(ours.stdout)) >= 2
        assert ours.stdout == theirs.stdout, model
        threaded = invoke(face_detection_cli.main, folder, "--model", model, "--cpus", "2")
        assert threaded.stdout == ours.stdout
    photo = folders.unknown / "astronaut.png"
    assert invoke(face_detection_cli.main, photo).stdout == invoke(original.detection, photo).stdout
    (folders.small / "broken.png").write_bytes(b"\x89PNG\r\n")
    try:
        broken = invoke(face_detection_cli.main, folders.small, "--model", "cnn")
    finally:
        (folders.small / "broken.png").unlink()
    assert broken.exit_code == 1 and broken.stdout == ours.stdout and "broken.png" in broken.stderr


def test_installed_programs_run(folders):
    """The scripts pyproject.toml installs name these click commands; `python -m` runs them too."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    expected = {
        "facewatch-face-recognition": face_recognition_cli.main,
        "facewatch-face-detection": face_detection_cli.main,
    }
    for name, command in expected.items():
        module, _, attribute = scripts[name].partition(":")
        assert getattr(__import__(module, fromlist=[attribute]), attribute) is command
        assert isinstance(command, click.Command)
    assert not {"face_recognition", "face_detection"} & scripts.keys()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "worker.compat.face_recognition.face_detection_cli", str(folders.small / "hopper.png")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert [line.split(",")[0] for line in done.stdout.splitlines()] == [str(folders.small / "hopper.png")]
