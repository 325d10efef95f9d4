"""`facewatch eval quality`: strangers' and enrolled people's match rates per face quality, on real data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from worker.config import Settings
from worker.errors import FacewatchError
from worker.evaluation.quality import measure, quality_table, size_table


def test_strangers_and_shrunk_probes_are_measured_per_bin(shared_dir):
    data = shared_dir / "data"
    strangers, enrolled = measure(
        Settings(),
        data / "detection" / "wider_val_subset200",
        data / "lfw" / "images",
        gallery_size=30,
        stranger_limit=60,
        progress=False,
    )
    assert len(strangers.status) == 60 and not strangers.correct.any()  # nobody in WIDER is enrolled
    assert len(enrolled.status) > 30  # each second photo as it is and shrunk to several widths
    assert set(enrolled.quality.size.round()) >= {16.0, 32.0, 64.0}
    rows = quality_table(strangers, enrolled)
    assert sum(r["strangers"] for r in rows) == 60 and sum(r["enrolled"] for r in rows) == len(enrolled.status)
    # Larger faces are recognised more often than 16 px ones.
    sizes = {r["width_px"]: r for r in size_table(strangers, enrolled) if r["enrolled"]}
    assert sizes["64-96"]["enrolled_correct"] > sizes["16-20"]["enrolled_correct"]


def test_cli_json_rows_and_bad_arguments(shared_dir, tmp_path):
    data = shared_dir / "data"
    argv = [
        sys.executable,
        "-m",
        "worker",
        "eval",
        "quality",
        "--strangers",
        str(data / "detection/wider_val_subset200"),
    ]
    argv += ["--lfw", str(data / "lfw/images"), "--gallery-size", "10", "--limit", "20", "--json", "--quiet"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert {"quality", "width_px"} <= {key for row in rows for key in row}
    missing = subprocess.run([*argv[:6], str(tmp_path), *argv[7:]], capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "gt.jsonl" in missing.stderr and "Traceback" not in missing.stderr


def test_a_gallery_larger_than_the_folder_is_refused(tmp_path):
    (tmp_path / "Ada").mkdir()
    (tmp_path / "Ada" / "Ada_0001.jpg").write_bytes(b"x")
    with pytest.raises(FacewatchError, match="1 people"):
        measure(Settings(), tmp_path, tmp_path, gallery_size=5, progress=False)
