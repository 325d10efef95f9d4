"""`facewatch watchlist ...` and `facewatch identify` on real photos and on bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.infra.media import color_bars, write_h264_mp4
from tests.infra.sqlite_reader import ReaderMidRead
from worker.cli.main import main
from worker.samples import sample_paths
from worker.vision.image import load_image
from worker.watchlist.store import WatchlistStore


def run_cli(capsys, *argv: str) -> tuple[int, list[dict], str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


def run_text(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def store(tmp_path):
    return str(tmp_path / "watchlist.db")


@pytest.fixture(scope="module")
def lfw(shared_dir):
    """Two photos each of two people, and one photo of a stranger (LFW)."""
    images = shared_dir / "data" / "lfw" / "images"
    bush = sorted((images / "George_W_Bush").glob("*.jpg"))
    blair = sorted((images / "Tony_Blair").glob("*.jpg"))
    stranger = sorted((images / "Serena_Williams").glob("*.jpg"))
    return {"bush": bush[:2], "bush_third": bush[2], "bush_other": bush[5], "blair": blair[:2], "stranger": stranger[0]}


def test_enroll_identify_remove_on_lfw(capsys, store, lfw, tmp_path):
    status, (bush,), err = run_cli(
        capsys, "watchlist", "--store", store, "--json", "add", "George W Bush", *map(str, lfw["bush"]),
        "--metadata", '{"role": "president"}',
    )  # fmt: skip
    assert status == 0 and len(bush["accepted"]) == 2 and bush["rejected"] == []
    assert err == ""  # stderr is captured, not a terminal: no progress bar (and no carriage returns) in it
    status, (blair,), _ = run_cli(
        capsys, "watchlist", "--store", store, "--json", "add", "Tony Blair", *map(str, lfw["blair"]), "--id", "tb-1"
    )
    assert status == 0 and blair["identity"] == "tb-1"

    status, records, _ = run_cli(capsys, "identify", "--store", store, str(lfw["bush_other"]), str(lfw["stranger"]))
    assert status == 0 and len(records) == 2
    assert records[0]["identity"] == bush["identity"] and records[0]["name"] == "George W Bush"
    assert records[0]["status"] == "match" and records[0]["distance"] <= 0.6 and 0 <= records[0]["score"] <= 1
    assert records[1]["identity"] is None and records[1]["name"] is None and records[1]["status"] != "match"
    assert set(records[0]) == {
        *("image", "box", "status", "identity", "name", "score", "distance", "confidence", "threshold")
    }
    # Two people enrolled: a match at this distance is nearly certain; the threshold is the configured distance.
    assert records[0]["confidence"] > 0.99 and records[0]["threshold"] == 0.5
    assert records[1]["confidence"] < records[0]["confidence"]

    status, listed, _ = run_cli(capsys, "watchlist", "--store", store, "--json", "list")
    assert [(r["name"], r["templates"]) for r in listed] == [("George W Bush", 2), ("Tony Blair", 2)]
    assert run_cli(capsys, "watchlist", "list", "--store", store, "--json")[1] == listed  # flags after it too
    status, (shown,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "show", bush["identity"])
    assert shown["metadata"] == {"role": "president"} and len(shown["templates"]) == 2
    assert "embedding" not in json.dumps(shown)
    status, out, _ = run_text(capsys, "watchlist", "--store", store, "show", bush["identity"])
    assert status == 0 and out.startswith(f"George W Bush ({bush['identity']}), 2 template(s)")

    with WatchlistStore(store) as opened:
        vectors = [t.embedding.astype("<f4").tobytes() for t in opened.templates(bush["identity"])]
    index_file = tmp_path / "watchlist.db.index"
    assert index_file.is_file() and all(v in index_file.read_bytes() for v in vectors)  # identify saved it
    status, (removed,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "remove", bush["identity"])
    assert status == 0 and removed == {"removed": bush["identity"], "templates": 2, "erasure": "complete"}
    status, (record,), _ = run_cli(capsys, "identify", "--store", store, str(lfw["bush"][0]))
    assert record["identity"] is None and record["name"] is None  # even his enrolled photo is unknown now
    status, (stats,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "stats")
    assert stats["identities"] == 1 and stats["templates"] == 2 and stats["healthy"] is True
    # Neither the store nor the saved index the worker would load holds his vectors any more.
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("watchlist.db"))
    assert not any(v in on_disk for v in vectors)
    status, out, _ = run_text(capsys, "watchlist", "--store", store, "stats")
    assert "1 identities, 2 templates" in out and "healthy" in out


def test_export_restore_round_trip(capsys, store, tmp_path, lfw):
    main(["watchlist", "--store", store, "add", "Tony Blair", *map(str, lfw["blair"])])
    capsys.readouterr()
    export = tmp_path / "backup.jsonl"
    status, out, _ = run_text(capsys, "watchlist", "--store", store, "export", str(export))
    assert status == 0 and "exported 1 identities, 2 templates" in out
    other = str(tmp_path / "restored.db")
    status, (counts,), _ = run_cli(capsys, "watchlist", "--store", other, "--json", "restore", str(export))
    assert status == 0 and counts["identities"] == 1 and counts["templates"] == 2
    _, before, _ = run_cli(capsys, "watchlist", "--store", store, "--json", "list")
    _, after, _ = run_cli(capsys, "watchlist", "--store", other, "--json", "list")
    assert [(r["identity"], r["name"], r["templates"]) for r in before] == [
        (r["identity"], r["name"], r["templates"]) for r in after
    ]
    _, (record,), _ = run_cli(capsys, "identify", "--store", other, str(lfw["blair"][1]))
    assert record["name"] == "Tony Blair"


def test_wheel_portraits_enroll_and_identify(capsys, store, tmp_path):
    portraits = sample_paths()
    hopper = cv2.cvtColor(load_image(portraits["Grace Hopper"]), cv2.COLOR_RGB2BGR)
    another = tmp_path / "hopper_mirrored_smaller.jpg"
    cv2.imwrite(str(another), cv2.resize(hopper[:, ::-1], None, fx=0.7, fy=0.7))
    status, out, _ = run_text(
        capsys, "watchlist", "--store", store, "add", "Grace Hopper", str(portraits["Grace Hopper"])
    )
    assert status == 0 and "Grace Hopper (" in out and "1 face(s) accepted, 0 rejected" in out
    status, records, _ = run_cli(capsys, "identify", "--store", store, str(another), str(portraits["Eileen Collins"]))
    assert status == 0
    assert records[0]["name"] == "Grace Hopper" and records[0]["status"] == "match"
    assert all(r["identity"] is None for r in records[1:]) and len(records) >= 2


def test_identify_a_folder_reports_each_face_and_each_image_without_one(capsys, store, tmp_path):
    portraits = sample_paths()
    assert main(["watchlist", "--store", store, "add", "--quiet", "Grace Hopper", str(portraits["Grace Hopper"])]) == 0
    capsys.readouterr()
    folder = tmp_path / "probes"
    (folder / "more").mkdir(parents=True)
    shutil.copy(portraits["Eileen Collins"], folder / "collins.png")
    hopper = cv2.cvtColor(load_image(portraits["Grace Hopper"]), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(folder / "more" / "hopper.jpg"), cv2.resize(hopper[:, ::-1], None, fx=0.7, fy=0.7))
    cv2.imwrite(str(folder / "more" / "empty_room.jpg"), np.full((240, 320, 3), 60, np.uint8))
    (folder / "more" / "README").write_text("probe photos\n")
    status, records, err = run_cli(capsys, "identify", "--store", store, str(folder))
    assert status == 0
    by_image = {}
    for record in records:
        by_image.setdefault(record["image"], []).append(record)
    assert set(by_image) == {str(folder / "collins.png"), str(folder / "more" / "hopper.jpg"),
                             str(folder / "more" / "empty_room.jpg")}  # fmt: skip
    assert [r["name"] for r in by_image[str(folder / "more" / "hopper.jpg")]] == ["Grace Hopper"]
    assert all(r["status"] != "match" for r in by_image[str(folder / "collins.png")])
    assert by_image[str(folder / "more" / "empty_room.jpg")] == [
        {"image": str(folder / "more" / "empty_room.jpg"), "box": None, "status": "no_face"}
    ]
    faces = len(records) - 1
    assert err == (
        f"identify: 3 images, {faces} faces, 1 without a face, 0 unreadable, 1 other file in the folders skipped\n"
    )


def test_import_folder_reports_rejections(capsys, store, tmp_path, lfw):
    root = tmp_path / "people"
    for name in ("Tony_Blair", "George_W_Bush"):
        (root / name).mkdir(parents=True)
    for photo in lfw["blair"]:
        shutil.copy(photo, root / "Tony_Blair" / photo.name)
    shutil.copy(lfw["bush"][0], root / "George_W_Bush" / "a.jpg")
    (root / "George_W_Bush" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    status, out, err = run_text(capsys, "watchlist", "--store", store, "import", str(root))
    # stderr is captured, not a terminal: no progress bar and its carriage returns in the log.
    assert status == 0 and "importing identities" not in err and "\r" not in err
    assert "Tony Blair (" in out and "George W Bush (" in out
    assert f"rejected {root / 'George_W_Bush' / 'broken.jpg'}: unreadable" in out
    assert "imported 3 template(s)" in out and "; 1 rejected" in out
    status, reports, _ = run_cli(capsys, "watchlist", "--store", store, "--json", "import", str(root))
    assert status == 0 and all(not r["accepted"] for r in reports)  # all near-duplicates the second time


def test_import_warns_of_two_folders_of_one_person(capsys, store, tmp_path, lfw):
    root = tmp_path / "people"
    for folder, photo in (("George_W_Bush", lfw["bush"][0]), ("Dubya", lfw["bush_other"]),
                          ("Serena_Williams", lfw["stranger"])):  # fmt: skip
        (root / folder).mkdir(parents=True)
        shutil.copy(photo, root / folder / "a.jpg")
    status, reports, err = run_cli(capsys, "watchlist", "--store", store, "--json", "import", str(root))
    assert status == 0
    by_name = {r["name"]: r for r in reports}
    bush, dubya = by_name["George W Bush"], by_name["Dubya"]
    assert [s["identity"] for s in bush["similar"]] == [dubya["identity"]]
    assert [s["identity"] for s in dubya["similar"]] == [bush["identity"]]
    assert bush["similar"][0]["distance"] == dubya["similar"][0]["distance"] <= 0.5
    assert by_name["Serena Williams"]["similar"] == []
    assert err.count("warning: a new template of ") == 2


def test_bad_inputs_give_one_line_errors(capsys, store, tmp_path):
    portrait = str(sample_paths()["Grace Hopper"])
    status, _, err = run_text(capsys, "watchlist", "--store", store, "list")
    assert (
        status == 1
        and err
        == f"facewatch: error: watchlist store {store} does not exist (enroll someone first: facewatch watchlist add)\n"
    )
    status, _, err = run_text(capsys, "identify", "--store", store, portrait)
    assert status == 1 and "does not exist" in err

    assert main(["watchlist", "--store", store, "add", "Grace Hopper", portrait]) == 0
    capsys.readouterr()
    status, _, err = run_text(capsys, "watchlist", "--store", store, "remove", "no-such-id")
    assert status == 1 and err == "facewatch: error: no identity with id or name 'no-such-id' in the watchlist\n"
    status, _, err = run_text(capsys, "watchlist", "--store", store, "show", "no-such-id")
    assert status == 1 and err.count("\n") == 1

    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    status, out, err = run_text(capsys, "watchlist", "--store", store, "add", "Nobody", str(notes))
    assert status == 1 and "unreadable" in out
    assert err.strip().endswith(f"facewatch: error: nothing enrolled for Nobody: unreadable: {notes}: not a JPEG, PNG, "
                                "WebP, BMP or TIFF image")  # fmt: skip
    status, _, err = run_text(capsys, "watchlist", "--store", store, "add", "X", portrait, "--metadata", "{oops")
    assert status == 1 and "--metadata is not valid JSON" in err

    status, records, err = run_cli(capsys, "identify", "--store", store, str(notes), portrait)
    assert status == 1 and err.startswith(f"facewatch: error: {notes}") and records[0]["name"] == "Grace Hopper"

    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text('{"format": "facewatch-watchlist", "format_version": 1}\n{"id": ')
    status, _, err = run_text(capsys, "watchlist", "--store", store, "restore", str(corrupt))
    assert status == 1 and err.count("\n") == 1 and "corrupt.jsonl" in err
    status, _, err = run_text(capsys, "watchlist", "--store", store, "restore", str(tmp_path / "missing.jsonl"))
    assert status == 1 and "does not exist" in err
    _, (stats,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "stats")
    assert stats["identities"] == 1  # failed restores changed nothing


def test_identify_with_the_svm_classifier(capsys, store, lfw, shared_dir):
    images = shared_dir / "data" / "lfw" / "images"
    run_cli(capsys, "watchlist", "--store", store, "--json", "add", "George W Bush", *map(str, lfw["bush"]))
    status, records, err = run_cli(capsys, "identify", "--store", store, "--classifier", "svm", str(lfw["bush_other"]))
    assert status == 1 and "at least 2 identities" in err  # one identity: no SVM to train
    blair = sorted((images / "Tony_Blair").glob("*.jpg"))[:4]
    run_cli(capsys, "watchlist", "--store", store, "--json", "add", "Tony Blair", *map(str, blair))
    probe = sorted((images / "Tony_Blair").glob("*.jpg"))[6]
    # Two photos of Bush are too few for an SVM: refused with the reason, never a guess.
    status, records, err = run_cli(capsys, "identify", "--store", store, "--classifier", "svm", str(probe))
    assert status == 1 and records == [] and "at least 3 templates of every identity" in err
    run_cli(capsys, "watchlist", "--store", store, "--json", "add", "George W Bush", str(lfw["bush_third"]), "--merge")
    status, records, _ = run_cli(capsys, "identify", "--store", store, "--classifier", "svm", str(probe))
    assert status == 0 and records[0]["name"] == "Tony Blair" and records[0]["status"] == "match"
    assert 0.3 <= records[0]["confidence"] <= 1.0 and records[0]["distance"] <= records[0]["threshold"] == 0.5
    status, records, _ = run_cli(
        capsys, "identify", "--store", store, "--classifier", "svm", "--svm-threshold", "1.0", str(probe)
    )
    assert status == 0 and records[0]["identity"] is None and records[0]["status"] == "uncertain"
    status, records, _ = run_cli(capsys, "identify", "--store", store, "--classifier", "svm", str(lfw["stranger"]))
    assert status == 0 and records[0]["identity"] is None and records[0]["status"] != "match"


# -- enrollment gates and videos --------------------------------------------------------------


@pytest.fixture(scope="module")
def blurred_bush(lfw, tmp_path_factory):
    """A real LFW photo blurred with OpenCV until the default sharpness gate rejects it."""
    path = tmp_path_factory.mktemp("blurred") / "bush_blurred.png"
    image = cv2.imread(str(lfw["bush"][0]))
    cv2.imwrite(str(path), cv2.GaussianBlur(image, (0, 0), 4))
    return path


def test_blurred_photo_is_rejected_then_admitted_with_the_suggested_flag(capsys, store, blurred_bush):
    status, out, err = run_text(capsys, "watchlist", "--store", store, "add", "George W Bush", str(blurred_bush))
    assert status == 1 and "nothing enrolled for George W Bush" in err
    suggestion = re.search(
        r"too blurry \(sharpness ([\d.]+), minimum [\d.]+\): (--min-sharpness [\d.]+) would admit it", out
    )
    assert suggestion, out
    flag, value = suggestion.group(2).split()
    status, (report,), _ = run_cli(
        capsys, "watchlist", "--store", store, "--json", "add", "George W Bush", str(blurred_bush), flag, value
    )
    assert status == 0 and [a["image"] for a in report["accepted"]] == [str(blurred_bush)]


def test_import_report_suggests_the_flag_too(capsys, store, tmp_path, blurred_bush, lfw):
    root = tmp_path / "people"
    (root / "George_W_Bush").mkdir(parents=True)
    shutil.copy(blurred_bush, root / "George_W_Bush" / "blurred.png")
    shutil.copy(lfw["bush"][1], root / "George_W_Bush" / "sharp.jpg")
    status, out, _ = run_text(capsys, "watchlist", "--store", store, "import", str(root))
    assert status == 0 and "imported 1 template(s)" in out
    (line,) = [line for line in out.splitlines() if "blurred.png" in line]
    admit = re.search(r"(--min-sharpness [\d.]+) would admit it", line)
    assert admit, line
    status, (report,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "import", str(root),
                                   *admit.group(1).split())  # fmt: skip
    assert status == 0 and [a["image"] for a in report["accepted"]] == [str(root / "George_W_Bush" / "blurred.png")]


def test_config_env_and_flags_set_the_gates(capsys, store, tmp_path, monkeypatch, shared_dir):
    portrait = str(sample_paths()["Grace Hopper"])
    config = tmp_path / "facewatch.yaml"
    config.write_text("enrollment:\n  min_sharpness: 100000\n  largest: true\n")
    status, (report,), _ = run_cli(capsys, "--config", str(config), "watchlist", "--store", store, "--json",
                                   "add", "Grace Hopper", portrait)  # fmt: skip
    assert status == 1 and "minimum 100000" in report["rejected"][0]["reason"]
    monkeypatch.setenv("FACEWATCH_ENROLLMENT__MIN_FACE_SIZE", "1000")
    status, (report,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "add", "Grace Hopper", portrait)
    assert status == 1 and report["rejected"][0]["admit"].startswith("--min-face-size ")
    # Flags win over the environment and the file.
    argv = ["--config", str(config), "watchlist", "--store", store, "--json", "add", "Grace Hopper", portrait]
    status, (report,), _ = run_cli(capsys, *argv, "--min-sharpness", "15", "--min-face-size", "60")
    assert status == 0 and len(report["accepted"]) == 1
    # largest: true from the file takes the larger of two faces; --no-largest turns it off again.
    two = str(shared_dir / "data" / "stills" / "two_people.jpg")
    argv = ["--config", str(config), "watchlist", "--store", store, "--json", "add", "Two", two, "--min-sharpness", "1",
            "--min-face-size", "1"]  # fmt: skip
    status, (report,), _ = run_cli(capsys, *argv)
    assert status == 0 and len(report["accepted"]) == 1
    status, (report,), _ = run_cli(capsys, *argv, "--no-largest", "--new")
    assert status == 1 and report["rejected"][0]["admit"] == "--largest"
    status, _, err = run_text(capsys, "watchlist", "--store", store, "add", "X", portrait, "--frames", "0")
    assert status == 2 and "enrollment.video_frames: Input should be greater than or equal to 1" in err


@pytest.fixture(scope="module")
def clip(shared_dir):
    return shared_dir / "data" / "video" / "short_hamilton_clip.mp4"


def test_enroll_from_the_hamilton_clip_then_identify_his_still(capsys, store, clip, shared_dir):
    status, (report,), err = run_cli(
        capsys, "watchlist", "--store", store, "--json", "add", "Lin-Manuel Miranda", str(clip), "--frames", "60"
    )
    assert status == 0 and err == ""  # its progress bar is drawn only on a terminal
    assert len(report["accepted"]) == 5 and all(a["image"].startswith(f"{clip}#t=") for a in report["accepted"])
    (video,) = report["videos"]
    assert video["frames"] == 55 and video["tracks"][0] >= video["usable"] >= 5
    still = shared_dir / "data" / "stills" / "lin-manuel-miranda.png"
    status, (record,), _ = run_cli(capsys, "identify", "--store", store, str(still))
    assert status == 0 and record["name"] == "Lin-Manuel Miranda" and record["status"] == "match"
    others = [shared_dir / "data" / "stills" / name for name in ("alex-lacamoire.png", "obama.jpg", "biden.jpg")]
    status, records, _ = run_cli(capsys, "identify", "--store", store, *map(str, others))
    assert status == 0 and all(r["identity"] is None for r in records)


def test_photos_and_videos_mixed_in_one_add(capsys, store, clip, shared_dir):
    still = shared_dir / "data" / "stills" / "lin-manuel-miranda.png"
    status, out, _ = run_text(
        capsys, "watchlist", "--store", store, "add", "Lin-Manuel Miranda", str(clip), str(still), "--frames", "30",
        "--video-faces", "2",
    )  # fmt: skip
    assert status == 0 and "3 face(s) accepted, 0 rejected" in out
    assert re.search(rf"video {re.escape(str(clip))}: 28 frames, \d+ track\(s\) \(\d+(, \d+)* faces\); the dominant "
                     r"track \([\d.]+-[\d.]+ s\): \d+ face\(s\) passed the gates, 2 enrolled", out), out  # fmt: skip
    _, (listed,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "list")
    _, (shown,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "show", listed["identity"])
    sources = [t["source"] for t in shown["templates"]]
    assert str(still) in sources and sum(s.startswith(f"{clip}#t=") for s in sources) == 2


def test_video_without_a_face_is_a_clear_error(capsys, store, tmp_path):
    bars = tmp_path / "bars.mp4"
    write_h264_mp4(bars, color_bars(50), fps=25)
    status, out, err = run_text(capsys, "watchlist", "--store", store, "add", "Nobody", str(bars), "--frames", "10")
    assert status == 1 and f"rejected {bars}: no face in 10 frames" in out
    assert err.endswith(f"facewatch: error: nothing enrolled for Nobody: {bars}: no face in 10 frames\n")
    missing = tmp_path / "missing.mp4"
    status, _, err = run_text(capsys, "watchlist", "--store", store, "add", "Nobody", str(missing))
    assert status == 1 and err.endswith(
        f"facewatch: error: nothing enrolled for Nobody: unreadable: {missing}: no such file\n"
    )


def test_names_are_printed_safely_and_metadata_must_be_json(capsys, tmp_path):
    from worker.cli.watchlist_cmd import printable

    assert printable("Ada\x1b[2J\x07") == "Ada\\u001b[2J\\u0007"
    store = str(tmp_path / "w.db")
    status, _, err = run_text(
        capsys, "watchlist", "--store", store, "add", "Nobody", "--metadata", '{"x": NaN}', "x.jpg"
    )
    assert status != 0 and "NaN is not a JSON value" in err


def test_names_that_are_not_utf8_are_stored_and_shown_escaped(capsys, tmp_path):
    # Issue 16: a person or photo name holding a byte that is not UTF-8 (here Latin-1 é, 0xE9) made
    # `watchlist add` fail with a traceback (SQLite refuses lone surrogates) and JSON output invalid.
    import os

    store = str(tmp_path / "w.db")
    photo = tmp_path / os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(sample_paths()["Grace Hopper"], photo)
    name = os.fsdecode(b"Jos\xe9")  # as argv holds it
    status, (report,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "add", name, str(photo))
    assert status == 0 and report["name"] == "Jos\\xe9" and report["accepted"][0]["image"] == f"{tmp_path}/caf\\xe9.jpg"
    _, (shown,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "show", report["identity"])
    assert shown["name"] == "Jos\\xe9" and shown["templates"][0]["source"] == f"{tmp_path}/caf\\xe9.jpg"

    root = tmp_path / "people"
    (root / os.fsdecode(b"Ren\xe9e_Roe")).mkdir(parents=True)
    shutil.copy(sample_paths()["Eileen Collins"], root / os.fsdecode(b"Ren\xe9e_Roe") / "a.png")
    status, (imported,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "import", str(root))
    assert status == 0 and imported["name"] == "Ren\\xe9e Roe" and len(imported["accepted"]) == 1
    status, out, _ = run_text(capsys, "watchlist", "--store", store, "list")
    assert status == 0 and "Jos\\xe9" in out and "Ren\\xe9e Roe" in out


def test_enrollment_refuses_photos_over_the_pixel_budget(capsys, tmp_path):
    from tests.infra.bombs import jpeg_claiming

    store = str(tmp_path / "w.db")
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(jpeg_claiming(7900, 7900))
    portrait = str(sample_paths()["Grace Hopper"])
    argv = ["watchlist", "--store", store, "--json", "add", "Grace Hopper", str(bomb), portrait]
    status, (report,), _ = run_cli(capsys, *argv)
    assert status == 0 and [a["image"] for a in report["accepted"]] == [portrait]
    assert report["rejected"] == [
        {"image": str(bomb), "reason": f"unreadable: {bomb}: 7900x7900 is over the limit of 24000000 pixels "
         "(images.max_pixels)", "admit": None}
    ]  # fmt: skip


def test_remove_during_another_process_read_reports_erasure_pending_then_purge_finishes_it(capsys, store, monkeypatch):
    import numpy as np

    vectors = np.random.default_rng(3).normal(size=(2, 128)).astype(np.float32)
    with WatchlistStore(store) as opened:
        opened.add_identity("Keeper")
        gone, _ = opened.add_identity_with_templates("Zelda Quartermaine", vectors)
        opened.checkpoint()
    needles = [b"Zelda Quartermaine", *(v.astype("<f4").tobytes() for v in vectors)]

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in Path(store).parent.iterdir() if p.name.startswith("watchlist.db"))

    monkeypatch.setenv("FACEWATCH_WATCHLIST__ERASURE_WAIT_S", "0.5")
    with ReaderMidRead(store):
        status, (removed,), err = run_cli(capsys, "watchlist", "--store", store, "--json", "remove", gone.id)
        # The identity is gone from the watchlist, but its bytes are not gone from the disk: no "success".
        assert status == 75 and removed == {"removed": gone.id, "templates": 2, "erasure": "pending"}
        assert "warning: erasure pending" in err and "facewatch watchlist purge" in err
        assert all(needle in on_disk() for needle in needles)
        status, (stats,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "stats")
        assert status == 1 and stats["healthy"] is False and "erasure pending" in stats["problems"][0]
        status, out, err = run_text(capsys, "watchlist", "--store", store, "purge")
        assert status == 75 and "erasure pending" in err
    status, out, _ = run_text(capsys, "watchlist", "--store", store, "purge")
    assert status == 0 and "pending erasure completed" in out
    assert not any(needle in on_disk() for needle in needles)
    status, (stats,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "stats")
    assert status == 0 and stats["healthy"] is True and stats["identities"] == 1
    status, out, _ = run_text(capsys, "watchlist", "--store", store, "purge")
    assert status == 0 and "no erasure was pending" in out


def test_the_default_store_lives_in_the_users_data_folder(capsys, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)  # else the defaults live there
    monkeypatch.chdir(tmp_path)
    portraits = sample_paths()
    status, _, err = run_text(capsys, "watchlist", "add", "Grace Hopper", str(portraits["Grace Hopper"]))
    assert status == 0, err
    store = home / ".local" / "share" / "facewatch" / "watchlist.db"
    assert store.is_file() and store.stat().st_mode & 0o777 == 0o600
    assert store.parent.stat().st_mode & 0o777 == 0o700
    assert not list(tmp_path.glob("*.db"))  # nothing in the folder the command ran from
    status, records, err = run_cli(capsys, "identify", str(portraits["Grace Hopper"]))
    assert status == 0 and records[0]["name"] == "Grace Hopper", err
    # Another path's folder is not made: a typo there is an error, not a new empty watchlist.
    status, _, err = run_text(capsys, "watchlist", "--store", str(tmp_path / "typo" / "w.db"), "list")
    assert status != 0 and "does not exist" in err


def test_rekey_encrypts_rotates_and_decrypts_a_store(capsys, store, tmp_path, monkeypatch):
    import base64
    import os

    vectors = np.random.default_rng(5).normal(size=(2, 128)).astype(np.float32)
    with WatchlistStore(store) as opened:
        opened.add_identity_with_templates("Zelda Quartermaine", vectors)
    needles = [b"Zelda Quartermaine", *(v.astype("<f4").tobytes() for v in vectors)]

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in Path(store).parent.iterdir() if p.name.startswith("watchlist.db"))

    keys = []
    for number in range(2):
        keys.append(tmp_path / f"key{number}")
        keys[-1].write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    assert all(needle in on_disk() for needle in needles)
    status, out, err = run_text(capsys, "watchlist", "--store", store, "rekey", "--new-key-file", str(keys[0]))
    assert status == 0 and "1 identities, 2 templates encrypted with key id" in out, err
    assert not any(needle in on_disk() for needle in needles)
    status, out, err = run_text(capsys, "watchlist", "--store", store, "list")
    assert status == 1 and out == "" and err.count("\n") == 1 and "is encrypted (key id" in err
    monkeypatch.setenv("FACEWATCH_WATCHLIST__ENCRYPTION_KEY_FILE", str(keys[0]))
    status, (stats,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "stats")
    assert status == 0 and stats["healthy"] and stats["identities"] == 1 and stats["key_id"]
    status, (rotated,), _ = run_cli(
        capsys, "watchlist", "--store", store, "--json", "rekey", "--new-key-file", str(keys[1])
    )
    assert status == 0 and rotated["erasure"] == "complete" and rotated["key_id"] != stats["key_id"]
    status, _, err = run_text(capsys, "watchlist", "--store", store, "list")
    assert status == 1 and "is encrypted with key id" in err  # the old key no longer opens it
    monkeypatch.setenv("FACEWATCH_WATCHLIST__ENCRYPTION_KEY_FILE", str(keys[1]))
    status, out, _ = run_text(capsys, "watchlist", "--store", store, "rekey", "--decrypt")
    assert status == 0 and "decrypted" in out
    monkeypatch.delenv("FACEWATCH_WATCHLIST__ENCRYPTION_KEY_FILE")
    status, (listed,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "list")
    assert listed["name"] == "Zelda Quartermaine" and listed["templates"] == 2
    audit = [json.loads(line) for line in Path(f"{store}.audit.jsonl").read_text().splitlines()]
    assert [e["outcome"] for e in audit if e["action"] == "rekey"] == ["ok", "ok", "ok"]


ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_an_enrolled_name_is_refused_merged_or_added_deliberately(capsys, store, lfw):
    bush = "George W Bush"
    status, (first,), err = run_cli(capsys, "watchlist", "--store", store, "--json", "add", bush, str(lfw["bush"][0]))
    assert status == 0 and first["similar"] == [] and "warning" not in err
    # The same name again: refused with the id and the two ways on, and nothing is enrolled.
    status, out, err = run_text(capsys, "watchlist", "--store", store, "add", bush, str(lfw["bush"][1]))
    assert status == 1 and out == ""
    assert err == (
        f"facewatch: error: {bush!r} is already enrolled ({first['identity']}): --merge adds these photos to it, "
        "--new makes a second identity with the same name\n"
    )
    _, listed, _ = run_cli(capsys, "watchlist", "--store", store, "--json", "list")
    assert [(i["identity"], i["templates"]) for i in listed] == [(first["identity"], 1)]
    # --merge: more photos of that identity.
    status, (merged,), err = run_cli(
        capsys, "watchlist", "--store", store, "--json", "add", bush, str(lfw["bush"][1]), "--merge"
    )
    assert status == 0 and merged["identity"] == first["identity"] and len(merged["accepted"]) == 1
    assert merged["similar"] == [] and "warning" not in err  # his own templates are not "another identity"
    # --new: a second identity with that name, and the warning that it is within the threshold of the first.
    status, (second,), err = run_cli(
        capsys, "watchlist", "--store", store, "--json", "add", bush, str(lfw["bush_other"]), "--new"
    )
    assert status == 0 and second["identity"] != first["identity"]
    (similar,) = second["similar"]
    assert similar["identity"] == first["identity"] and similar["name"] == bush and 0 < similar["distance"] <= 0.5
    assert err.startswith(f"warning: a new template of {bush} ({second['identity']}) is ")
    assert f"from {bush} ({first['identity']}), within the match threshold 0.5" in err
    status, _, err = run_text(capsys, "watchlist", "--store", store, "add", bush, str(lfw["bush_other"]), "--merge")
    assert status == 1 and f"2 identities are named {bush!r}" in err and "--id ID" in err
    # A new id for a taken name is a second person of that name too: refused without --new.
    status, _, err = run_text(capsys, "watchlist", "--store", store, "add", bush, str(lfw["bush_third"]), "--id", "gwb")
    assert status == 1 and f"{bush!r} is already enrolled" in err
    with pytest.raises(SystemExit) as usage:
        main(["watchlist", "--store", store, "add", bush, "x.jpg", "--merge", "--new"])
    assert usage.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    # A stranger is not similar to anyone.
    status, (serena,), err = run_cli(
        capsys, "watchlist", "--store", store, "--json", "add", "Serena Williams", str(lfw["stranger"])
    )
    assert status == 0 and serena["similar"] == [] and "warning" not in err


def test_show_rename_remove_take_a_unique_name(capsys, store, lfw):
    status, (blair,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "add", "Tony Blair",
                                  str(lfw["blair"][0]))  # fmt: skip
    assert status == 0
    status, (shown,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "show", "Tony Blair")
    assert status == 0 and shown["identity"] == blair["identity"] and len(shown["templates"]) == 1
    assert ISO_UTC.match(shown["created"]) and ISO_UTC.match(shown["templates"][0]["created"])
    _, (listed,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "list")
    assert listed["created"] == shown["created"]
    status, (renamed,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "rename", "Tony Blair", "PM")
    assert status == 0 and renamed["identity"] == blair["identity"] and renamed["name"] == "PM"
    # Two identities named alike: a name is ambiguous, the error lists the ids; an id still works.
    status, (other,), _ = run_cli(
        capsys, "watchlist", "--store", store, "--json", "add", "PM", str(lfw["stranger"]), "--new"
    )
    assert status == 0
    ids = sorted([blair["identity"], other["identity"]])
    for command in (["show", "PM"], ["remove", "PM"], ["rename", "PM", "X"]):
        status, out, err = run_text(capsys, "watchlist", "--store", store, *command)
        assert status == 1 and out == "" and err.count("\n") == 1, command
        assert "2 identities are named 'PM': give one of their ids" in err
        assert all(i in err for i in ids)
    status, (removed,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "remove", other["identity"])
    assert status == 0 and removed["removed"] == other["identity"]
    status, (removed,), _ = run_cli(capsys, "watchlist", "--store", store, "--json", "remove", "PM")
    assert status == 0 and removed == {"removed": blair["identity"], "templates": 1, "erasure": "complete"}
    _, listed, _ = run_cli(capsys, "watchlist", "--store", store, "--json", "list")
    assert listed == []
    status, _, err = run_text(capsys, "watchlist", "--store", store, "show", "PM")
    assert status == 1 and err == "facewatch: error: no identity with id or name 'PM' in the watchlist\n"


def test_a_trained_model_enrolls_and_identifies_apart_from_dlibs(capsys, store, tmp_path, lfw):
    """embedder.model: its templates carry its version, identify reports no dlib-calibrated confidence, and dlib's
    ResNet refuses its watchlist (and it refuses dlib's) until re-enrolled."""
    from tests.embed.test_trained_model import save_random_nn4

    model = save_random_nn4(tmp_path / "nn4.pt")
    config = tmp_path / "nn4.yaml"
    config.write_text(
        f"embedder:\n  model: {model}\nwatchlist:\n  match_threshold: 0.3\n  unknown_threshold: 0.4\n", encoding="utf-8"
    )
    status, _, err = run_text(
        capsys, "--config", str(config), "watchlist", "--store", store, "add", "Bush", str(lfw["bush"][0])
    )
    assert status == 0, err
    with WatchlistStore(store) as opened:
        version = opened.model_version
    assert version is not None and version.startswith("nn4.small2-")
    status, records, err = run_cli(
        capsys, "--config", str(config), "identify", "--store", store, str(lfw["bush_third"])
    )
    assert status == 0, err
    assert records[0]["confidence"] is None and records[0]["threshold"] == 0.3, records

    status, _, err = run_text(capsys, "identify", "--store", store, str(lfw["bush_third"]))
    assert status != 0 and version in err and "re-enroll" in err, err
    dlib_store = str(tmp_path / "dlib.db")
    assert run_text(capsys, "watchlist", "--store", dlib_store, "add", "Blair", str(lfw["blair"][0]))[0] == 0
    status, _, err = run_text(capsys, "--config", str(config), "identify", "--store", dlib_store, str(lfw["stranger"]))
    assert status != 0 and "re-enroll" in err, err

    # Its export restores with it, into a new store or over dlib's (the explicit switch), and not without it.
    export = str(tmp_path / "nn4.jsonl")
    assert run_text(capsys, "watchlist", "--store", store, "export", export)[0] == 0
    status, _, err = run_text(capsys, "watchlist", "--store", str(tmp_path / "new.db"), "restore", export)
    assert status != 0 and version in err, err
    for target in (str(tmp_path / "new.db"), dlib_store):
        status, _, err = run_text(capsys, "--config", str(config), "watchlist", "--store", target, "restore", export)
        assert status == 0, err
        with WatchlistStore(target) as opened:
            assert opened.model_version == version and [i.name for i in opened.list_identities()] == ["Bush"]
