"""`facewatch bench compat`: both sides measured on real photos, the same faces found, the table printed."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from worker.bench.compat import folder_images, run_compat_bench
from worker.cli.main import main
from worker.config import Settings
from worker.errors import FacewatchError
from worker.samples import sample_paths


@pytest.fixture
def photos(tmp_path):
    for name, path in sample_paths().items():
        shutil.copy(path, tmp_path / f"{name.replace(' ', '_')}{path.suffix}")
    (tmp_path / "notes.txt").write_text("not a photo\n")
    return tmp_path


def test_rows_for_both_sides_with_the_same_faces(photos):
    settings = Settings()
    settings.embedder.device = settings.detector.device = "cpu"
    paths = folder_images(photos, 10)
    assert [path.name for path in paths] == ["Eileen_Collins.png", "Grace_Hopper.jpg"]
    rows = run_compat_bench(settings, paths, benches=("loop-hog", "many-faces"), rounds=2)
    assert [(row["bench"], row["impl"]) for row in rows] == [
        ("loop-hog", "face_recognition"),
        ("loop-hog", "facewatch"),
        ("many-faces", "face_recognition"),
        ("many-faces", "facewatch"),
    ]
    for peer, ours in (rows[0:2], rows[2:4]):
        assert ours["faces"] == peer["faces"] > 0 and ours["items"] == peer["items"]
        assert peer["ratio"] == pytest.approx(1.0) and ours["per_s"] > 0 and ours["cpu_ms"] > 0
        assert ours["ratio"] == pytest.approx(ours["per_s"] / peer["per_s"])
    assert rows[0]["items"] == 2 and rows[0]["unit"] == "images/s" and rows[0]["faces"] == 3
    assert rows[2]["items"] == rows[2]["faces"] == 16 and rows[2]["unit"] == "faces/s"


def test_command_prints_the_table(photos, capsys):
    status = main(["bench", "compat", str(photos), "--benches", "loop-hog", "--device", "cpu", "--images", "1"])
    out = capsys.readouterr().out
    assert status == 0
    assert f"1 photos from {photos}" in out and "x face_recognition" in out
    assert [line.split()[:3] for line in out.splitlines()[3:]] == [
        ["loop-hog", "face_recognition", "1"],
        ["loop-hog", "facewatch", "1"],
    ]


def test_help_lists_every_bench_without_loading_them():
    from worker.bench.compat import BENCHES
    from worker.cli.bench import COMPAT_BENCHES

    assert ",".join(BENCHES) == COMPAT_BENCHES
    script = "import sys, worker.cli.main as m; m.build_parser(); print('worker.compat' in ' '.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"


def test_bad_arguments_are_one_line_errors(photos, capsys):
    assert main(["bench", "compat", str(photos), "--benches", "loop-yolo"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "facewatch: error: unknown compat benches ['loop-yolo']; known: loop-hog, loop-cnn, many-faces, batch-cnn"
    ]
    (photos / "empty").mkdir()
    with pytest.raises(FacewatchError, match=r"no \.jpg, \.jpeg or \.png images"):
        folder_images(photos / "empty", 1)
    with pytest.raises(FacewatchError, match="is not a folder"):
        folder_images(photos / "nothing", 1)
    with pytest.raises(FacewatchError, match="rounds must be at least 1"):
        run_compat_bench(Settings(), [photos / "Grace_Hopper.jpg"], rounds=0)
