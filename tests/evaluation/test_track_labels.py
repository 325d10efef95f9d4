"""Track labels given by eye: matched to tracks by first frame and box, unsure ones left out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from worker.errors import FacewatchError
from worker.evaluation.cluster import HAMILTON_LABELS, TrackLabel, VideoTrack, labels_by_eye, read_track_labels


def track(track_id: str, frame: int, box: tuple[int, int, int, int]) -> VideoTrack:
    return VideoTrack(track_id, np.zeros(128, np.float32), 5, frame, box)


def test_a_track_gets_the_label_of_the_entry_with_its_first_frame_and_box_whatever_its_id():
    entries = [
        TrackLabel(10, (0, 0, 50, 50), "person A"),
        TrackLabel(10, (100, 0, 150, 50), "person B"),
        TrackLabel(20, (0, 0, 50, 50), "unsure"),
    ]
    tracks = [
        track("renumbered-1", 10, (102, 2, 152, 52)),  # B's box, shifted by 2 px
        track("renumbered-0", 10, (1, 0, 51, 50)),
        track("x", 20, (0, 0, 50, 50)),  # unsure: not scored
        track("y", 11, (0, 0, 50, 50)),  # no entry starts in frame 11
        track("z", 10, (300, 300, 350, 350)),  # frame 10, but overlapping no labelled box
    ]
    assert labels_by_eye(tracks, entries) == ["person B", "person A", None, None, None]


def test_the_hamilton_labels_file_reads_and_says_how_tracks_are_defined():
    entries = read_track_labels(HAMILTON_LABELS)
    data = json.loads(HAMILTON_LABELS.read_text())
    assert len(entries) == len(data["tracks"]) and "by eye" in data["about"].lower()
    assert {"how", "key", "detector"} <= set(data["tracks_defined_by"])
    assert {e.label for e in entries} >= {"Lin-Manuel Miranda", "unsure"}


def test_a_broken_labels_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "labels.json"
    bad.write_text('{"tracks": [{"first_frame": 1}]}')
    with pytest.raises(FacewatchError, match=r"track labels .*labels\.json"):
        read_track_labels(bad)
