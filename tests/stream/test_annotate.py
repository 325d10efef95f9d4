"""`facewatch annotate`: the worker's pipeline and decisions drawn on a real clip and a real photo."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from tests.infra.worker_process import WorkerProcess
from tests.stream.test_runner import MIRANDA, NOT_IN_VIEW, _config, clip, enrolled_store  # noqa: F401 - fixtures
from worker.cli.main import main
from worker.stream.annotate import GREEN, GREY, RED, YELLOW, Annotator, draw
from worker.stream.events import FaceMatch
from worker.stream.frames import Frame
from worker.stream.stages import FrameDecided
from worker.stream.tracker import Track
from worker.vision.boxes import Box
from worker.watchlist.identify import Identification


def _run(capsys, *argv: str) -> tuple[int, list[dict], str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


def _answer(status: str, name: str | None, score: float, distance: float) -> Identification:
    matched = status == "match"
    return Identification(
        status, "id-" + name if matched and name else None, name if matched else None, score, distance,
        "id-" + name if name else None, name, 1.0, 4,
    )  # fmt: skip


def _track(track_id: str, left: int) -> tuple[Track, Box]:
    box = Box(left, 10, left + 40, 60, 1.0)
    return Track(track_id, box, 0.0, 0.0, 0.0), box


def test_labels_follow_what_the_decide_stage_reported():
    annotator = Annotator()
    image = np.zeros((120, 400, 3), np.uint8)
    tracks = [_track(f"0-{i}", 10 + 70 * i) for i in range(5)]
    first = FrameDecided(
        Frame("cam", 0, 0.0, image),
        tracks,
        {
            "0-0": _answer("match", "Ada", 0.97, 0.34),
            "0-1": _answer("uncertain", "Ada", 0.92, 0.55),
            "0-2": _answer("unknown", None, 0.80, 0.89),
            "0-3": None,  # too poor to vote
            "0-4": _answer("match", "Bob", 0.96, 0.40),
        },
        {"0-4": ("id-Bob", "Bob")},  # recognised, but no FaceMatch: the cooldown held it back
        [],
    )
    labels = {label.track_id: label for label in annotator.labels(first)}
    assert (labels["0-0"].name, labels["0-0"].status, labels["0-0"].colour) == ("Ada?", "deciding: match 0.97", YELLOW)
    assert (labels["0-1"].name, labels["0-1"].status, labels["0-1"].colour) == ("Ada?", "uncertain 0.92", YELLOW)
    assert (labels["0-2"].name, labels["0-2"].status, labels["0-2"].colour) == (None, "unknown 0.80", RED)
    assert (labels["0-3"].name, labels["0-3"].status, labels["0-3"].colour) == (None, "tracking", GREY)
    assert (labels["0-4"].name, labels["0-4"].status, labels["0-4"].colour) == ("Bob", "match (cooldown)", GREEN)
    # The next frame completes Ada's decision; its faces are not re-detected (tracked only), the label stays.
    match = FaceMatch(
        event_id="e", camera_id="cam", track_id="0-0", model_version="m", watchlist_version=4, identity_id="id-Ada",
        identity_name="Ada", score=0.95, distance=0.36, confidence=0.98,
        threshold=0.5, faces=2, box=[10, 10, 50, 60], first_seen=0, last_seen=1,
        frame_timestamp=1, frame_width=400, frame_height=120, frame_seq=1,
    )  # fmt: skip
    second = FrameDecided(Frame("cam", 1, 0.04, image), tracks[:1], {}, {"0-0": ("id-Ada", "Ada")}, [match])
    (label,) = annotator.labels(second)
    assert (label.name, label.status, label.colour) == ("Ada", "match 0.95 d=0.36", GREEN)
    drawn = draw(image, [label])
    assert (drawn[10, 10:50] == GREEN).all() and (image == 0).all()  # the box's top edge; the input is untouched


def _green_pixels(path: Path) -> int:
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return int((rgb == GREEN).all(axis=2).sum())


@pytest.mark.shared
def test_annotated_clip_shows_the_workers_decisions(capsys, tmp_path, clip, enrolled_store):  # noqa: F811
    out = tmp_path / "annotated.mp4"
    status, events, err = _run(capsys, "annotate", str(clip), "--store", str(enrolled_store), "--out", str(out))
    assert status == 0 and err.startswith("annotate: 275 frames") and err.strip().endswith(f"wrote {out}")
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    with av.open(str(clip)) as container:
        original = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert len(frames) == 275 and frames[0].shape == original.shape
    matches = [e for e in events if e["type"] == "face_match"]
    assert {e["identity_name"] for e in matches} == {MIRANDA} and NOT_IN_VIEW not in err
    assert all(e["faces"] >= 2 for e in matches)  # decisions.min_faces: votes of a track, not one frame's answer
    ended = {e["track_id"] for e in events if e["type"] == "track_ended"}
    assert {e["track_id"] for e in matches} <= ended

    # The frame that completed Miranda's decision, and a frame well before it, drawn losslessly (--at).
    decided_at = datetime.fromisoformat(matches[0]["frame_timestamp"]).timestamp()  # the video's clock
    after, before = tmp_path / "after.png", tmp_path / "before.png"
    assert main(["annotate", str(clip), "--store", str(enrolled_store), "--out", str(after), "--at", "6"]) == 0
    assert main(["annotate", str(clip), "--store", str(enrolled_store), "--out", str(before), "--at", "0.5"]) == 0
    capsys.readouterr()
    assert decided_at < 6.5
    assert _green_pixels(after) > 200 and _green_pixels(before) < 20  # a green (matched) box only once decided


@pytest.mark.shared
def test_annotate_decides_as_the_worker_does(capsys, tmp_path, clip, enrolled_store):  # noqa: F811
    """The same tracks, faces and matches as `facewatch run` on the same file: the worker's pipeline, not a copy."""
    camera = {"id": "hamilton", "url": str(clip), "realtime": False}
    worker = WorkerProcess(tmp_path, _config(enrolled_store, tmp_path, cameras=[camera])).start()
    try:
        assert worker.wait_exit(600) == 0, worker.log_tail()
        from_worker = worker.events()
    finally:
        worker.close()
    status, from_annotate, _ = _run(
        capsys, "annotate", str(clip), "--store", str(enrolled_store), "--out", str(tmp_path / "a.mp4")
    )
    assert status == 0

    def summary(events: list[dict]) -> tuple:
        ended = sorted((e["faces"], e["identity_name"] or "") for e in events if e["type"] == "track_ended")
        return ended, sorted(e["identity_name"] for e in events if e["type"] == "face_match")

    assert summary(from_annotate) == summary(from_worker)


@pytest.mark.shared
def test_annotated_photo_and_bad_arguments(capsys, tmp_path, shared_dir, enrolled_store, monkeypatch):  # noqa: F811
    photo = shared_dir / "data" / "stills" / "two_people.jpg"
    out = tmp_path / "two.png"
    status, events, _ = _run(capsys, "annotate", str(photo), "--store", str(enrolled_store), "--out", str(out))
    # One frame cannot reach decisions.min_faces (2) votes: both tracks end undecided, drawn as deciding.
    assert status == 0 and [e["type"] for e in events] == ["track_started"] * 2 + ["track_ended"] * 2
    height, width = cv2.imread(str(photo)).shape[:2]
    assert {(e["frame_width"], e["frame_height"], e["frame_seq"]) for e in events[:2]} == {(width, height, 0)}
    # Both enrolled people matched one face each: near someone, never safely recognised.
    assert [(e["outcome"], e["identity_id"]) for e in events[2:]] == [("uncertain", None)] * 2
    assert cv2.imread(str(out)).shape == cv2.imread(str(photo)).shape and _green_pixels(out) == 0
    monkeypatch.setenv("FACEWATCH_DECISIONS__MIN_FACES", "1")
    status, events, _ = _run(capsys, "annotate", str(photo), "--store", str(enrolled_store), "--out", str(out))
    assert status == 0 and sorted(e["identity_name"] for e in events if e["type"] == "face_match") == [
        "Barack Obama",
        "Joe Biden",
    ]
    assert _green_pixels(out) > 200

    store = str(enrolled_store)
    for argv, message in [
        ([str(photo), "--store", store, "--out", str(tmp_path / "x.mp4")], "give an image name"),
        ([str(photo), "--store", store, "--out", str(out), "--at", "1"], "--at takes a time"),
        ([str(shared_dir / "data" / "video" / "short_hamilton_clip.mp4"), "--store", store, "--out", str(out)],
         "ending in .mp4"),
        ([str(photo), "--store", store, "--out", str(tmp_path / "no" / "x.png")], "does not exist"),
        ([str(photo), "--store", str(tmp_path / "none.db"), "--out", str(out)], "enroll someone first"),
        ([str(tmp_path / "missing.mp4"), "--store", store, "--out", str(tmp_path / "m.mp4")], "does not exist"),
    ]:  # fmt: skip
        status, events, err = _run(capsys, "annotate", *argv)
        assert status == 1 and events == [] and err.count("\n") == 1 and message in err, err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    status, _, err = _run(capsys, "annotate", str(broken), "--store", store, "--out", str(tmp_path / "b.mp4"))
    assert status == 1 and err.startswith(f"facewatch: error: cannot open video {broken}") and err.count("\n") == 1
