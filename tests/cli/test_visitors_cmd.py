"""`facewatch visitors ...` and `facewatch eval cluster` on real LFW faces and a real visitor store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.realdata import shared_data
from worker.cli.main import main
from worker.config import Settings, VisitorsConfig
from worker.obs.metrics import Metrics
from worker.recognition import FaceRecognizer
from worker.stream.visitors import VisitorStage, VisitorTrack
from worker.vision.image import load_image
from worker.visitors.store import VisitorStore, VisitorStoreError

T0 = 1_780_000_000.0


@pytest.fixture(scope="module")
def people() -> dict[str, tuple[list[Path], np.ndarray]]:
    """Two real people with three photos each: name -> (photos, embeddings)."""
    folders = [f for f in sorted((shared_data() / "lfw" / "images").iterdir()) if len(list(f.glob("*.jpg"))) >= 3]
    recognizer = FaceRecognizer(Settings())
    found = {}
    for folder in folders[3:5]:
        photos = sorted(folder.glob("*.jpg"))[:3]
        analysed = recognizer.analyze([load_image(p) for p in photos])
        found[folder.name] = (photos, np.stack([f.embeddings[f.largest()] for f in analysed]))
    return found


def _fill(path: Path, people, threshold: float = 0.48) -> None:
    """Two tracks of each person (at the same door, an hour apart), as the worker records them."""
    stage = VisitorStage(
        VisitorsConfig(threshold=threshold, visit_gap_s=600),
        VisitorStore(path),
        Metrics(),
        clock=lambda: T0 + 3 * 3600,
        idle=lambda: 0.0,
    )
    for n, (_, vectors) in enumerate(people.values()):
        for k in range(2):
            start = T0 + k * 3600 + n * 60
            stage.track_ended(VisitorTrack("door", f"{n}-{k}", start, start + 20, vectors[k], 5))
    stage.close()
    stage.store.close()


def _json_lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_list_show_and_forget(tmp_path, people, capsys, monkeypatch):
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("FACEWATCH_AUDIT__PATH", str(audit))  # a forget is audited: not in the user's home
    store = tmp_path / "visitors.db"
    _fill(store, people)
    assert main(["visitors", "--store", str(store), "list", "--json"]) == 0
    listed = _json_lines(capsys)
    assert [(v["tracks"], v["visits"]) for v in listed] == [(2, 2), (2, 2)]
    first = listed[0]["visitor_id"]
    assert main(["visitors", "--store", str(store), "show", first, "--json"]) == 0
    (shown,) = _json_lines(capsys)
    assert [v["returning"] for v in shown["visits"]] == [False, True] and len(shown["tracks"]) == 2
    assert set(shown["tracks"][0]) == {"camera_id", "track_id", "started_at", "faces"}  # never the embedding
    assert main(["visitors", "--store", str(store), "forget", first]) == 0
    assert main(["visitors", "--store", str(store), "list", "--json"]) == 0
    assert [v["visitor_id"] for v in _json_lines(capsys)] == [listed[1]["visitor_id"]]
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    (_, vectors), _ = people.values()
    assert vectors[0].astype("<f4").tobytes() not in data
    assert main(["visitors", "--store", str(store), "forget", first]) == 1
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["action"], e["visitor"], e["outcome"]) for e in entries] == [
        ("visitor_forget", first, "ok"),
        ("visitor_forget", first, f"error: no visitor {first!r}"),
    ]
    assert f"no visitor '{first}'" in capsys.readouterr().err


def test_recluster_reports_and_applies_what_the_online_pass_split(tmp_path, people, capsys):
    store = tmp_path / "visitors.db"
    _fill(store, people, threshold=0.05)  # too strict online: every track its own visitor
    assert main(["visitors", "--store", str(store), "recluster", "--threshold", "0.48", "--json"]) == 0
    (summary,) = _json_lines(capsys)
    assert (summary["tracks"], summary["visitors_before"], summary["visitors_after"]) == (4, 4, 2)
    assert (summary["merged"], summary["split"], summary["tracks_moved"], summary["applied"]) == (2, 0, 2, False)
    assert main(["visitors", "--store", str(store), "recluster", "--threshold", "0.48", "--apply", "--json"]) == 0
    assert _json_lines(capsys)[0]["applied"] is True
    with VisitorStore(store) as visitors:
        assert len(visitors.visitors()) == 2
        assert len({v.visitor_id for v in visitors.visits()}) == 2  # the visits followed their tracks
        assert visitors.version == 1  # the worker sees the change and reloads


def test_opt_out_forgets_the_person_and_can_be_removed(tmp_path, people, capsys):
    store = tmp_path / "visitors.db"
    _fill(store, people)
    (photos, _), _ = people.values()
    assert main(["visitors", "--store", str(store), "opt-out", "add", str(photos[2])]) == 0
    captured = capsys.readouterr()
    entry = captured.out.strip()
    assert "1 visitors forgotten" in captured.err
    with VisitorStore(store) as visitors:
        assert len(visitors.visitors()) == 1 and visitors.stats()["opt_out"] == 1
    assert main(["visitors", "--store", str(store), "opt-out", "list"]) == 0
    assert capsys.readouterr().out.startswith(entry)
    assert main(["visitors", "--store", str(store), "opt-out", "remove", entry]) == 0
    with VisitorStore(store) as visitors:
        assert visitors.stats()["opt_out"] == 0


def test_missing_store_is_one_clear_line(tmp_path, capsys):
    assert main(["visitors", "--store", str(tmp_path / "none.db"), "list"]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"facewatch: error: no visitor store at {tmp_path / 'none.db'} (visitors.store)"
    )


def test_the_default_store_lives_in_the_users_data_folder(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)  # else the defaults live there
    monkeypatch.chdir(tmp_path)
    default = home / ".local" / "share" / "facewatch" / "visitors.db"
    assert Settings().visitors.store == default  # not the folder a command runs from
    assert main(["visitors", "list"]) == 1
    assert f"no visitor store at {default}" in capsys.readouterr().err
    with VisitorStore(Settings().visitors.store):  # what the worker opens: its folder is made, owner-only
        pass
    assert default.stat().st_mode & 0o777 == 0o600 and default.parent.stat().st_mode & 0o777 == 0o700
    assert main(["visitors", "list"]) == 0, capsys.readouterr().err
    assert not list(tmp_path.glob("*.db"))
    with pytest.raises(VisitorStoreError, match="does not exist"):  # another path's folder is not made: a typo
        VisitorStore(tmp_path / "typo" / "visitors.db")


def test_eval_cluster_chooses_on_dev_people_and_reports_on_the_others(tmp_path, capsys):
    lfw = shared_data() / "lfw" / "images"
    folders = [f for f in sorted(lfw.iterdir()) if len(list(f.glob("*.jpg"))) >= 2][:4]
    for folder in [*folders, next(f for f in sorted(lfw.iterdir()) if len(list(f.glob("*.jpg"))) == 1)]:
        shutil.copytree(folder, tmp_path / "images" / folder.name)
    dev = folders[:2]
    # A pairsDevTrain-style file naming the first two people: the threshold is chosen on them only.
    (tmp_path / "pairsDevTrain.txt").write_text(f"1\n{dev[0].name}\t1\t2\n{dev[0].name}\t1\t{dev[1].name}\t1\n")
    args = ["eval", "cluster", "--dataset", str(tmp_path), "--json", "--quiet", "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 0
    lines = _json_lines(capsys)
    assert {line["split"] for line in lines[:-1]} == {"dev", "test"}
    assert {line["people"] for line in lines[:-1] if line["split"] == "dev"} == {2}
    summary = lines[-1]
    assert set(summary) == {
        "bcubed_f",
        "bcubed_precision",
        "bcubed_recall",
        "pairwise_f",
        "clusters",
        "people",
        "images",
    }
    test_images = sum(len(list(f.glob("*.jpg"))) for f in folders[2:])
    assert (summary["people"], summary["images"]) == (2, test_images)  # the one-image person is left out
    assert 0.0 < summary["bcubed_f"] <= 1.0


def test_eval_cluster_scores_the_hamilton_tracks_against_the_labels_given_by_eye(capsys):
    from worker.evaluation.cluster import HAMILTON_LABELS, UNSURE, cluster_scores

    clip = shared_data() / "video" / "short_hamilton_clip.mp4"
    assert main(["eval", "cluster", "--video", str(clip), "--labels", str(HAMILTON_LABELS), "--json"]) == 0
    result = _json_lines(capsys)[-1]
    entries = json.loads(HAMILTON_LABELS.read_text())["tracks"]
    sure = {e["track_id"]: e["label"] for e in entries if e["label"] != UNSURE and e["faces"] >= 3}
    # Every labelled track of the file was found again (by first frame and box) and scored with its label;
    # no unsure track was.
    assert sorted(result["labelled"].values()) == sorted(sure.values())
    assert (result["images"], result["people"]) == (len(sure), len(set(sure.values())))
    labelled = sorted(result["labelled"])
    recomputed = cluster_scores([result["labelled"][t] for t in labelled], [result["visitor_of"][t] for t in labelled])
    assert result["bcubed_f"] == pytest.approx(recomputed["bcubed_f"])
    assert result["tracks"] == sum(1 for e in entries if e["faces"] >= 3)
