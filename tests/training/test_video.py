"""Mining training identities from the worker's own tracks on a real video."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from tests.realdata import shared_data
from worker.config import Settings
from worker.errors import FacewatchError
from worker.training.video import _Span, mine_videos, overlapping, video_files

FRAMES = 45  # 1.5 s of the Hamilton clip


def test_tracks_are_known_different_only_while_both_are_on_screen():
    spans = [_Span("a.mp4", 0.0, 2.0), _Span("a.mp4", 1.5, 3.0), _Span("a.mp4", 3.5, 4.0), _Span("b.mp4", 0.0, 9.0)]
    different = overlapping(spans)
    assert different.tolist() == [
        [False, True, False, False],
        [True, False, False, False],  # 1 and 2 never met: maybe one person who came back
        [False, False, False, False],
        [False, False, False, False],  # another video's tracks: nothing known
    ]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """The first FRAMES frames of the Hamilton clip, re-encoded (real frames, a short test)."""
    source = shared_data() / "video" / "short_hamilton_clip.mp4"
    out = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(source)) as reader, av.open(str(out), "w") as writer:
        stream_in = reader.streams.video[0]
        stream = writer.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = stream_in.width, stream_in.height, "yuv420p"
        stream.options = {"qscale": "2"}
        for index, frame in enumerate(reader.decode(stream_in)):
            if index == FRAMES:
                break
            image = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            writer.mux(stream.encode(image))
        writer.mux(stream.encode())
    return out


def test_each_track_becomes_an_identity_of_its_own_faces(clip, tmp_path):
    faces = mine_videos(Settings(), clip, tmp_path)
    assert len(faces) >= FRAMES // 2  # the performer is on screen throughout
    assert faces.small.shape[1:] == (96, 96, 3) and faces.large.shape[1:] == (150, 150, 3)
    counts = np.bincount(faces.labels, minlength=len(faces.names))
    assert (counts >= 1).all() and counts.max() >= 10
    # The faces of an identity are exactly the faces of one track.
    for label, name in enumerate(faces.names):
        assert {faces.sources[i] for i in np.flatnonzero(faces.labels == label)} == {name}
    assert faces.different is not None
    assert (faces.different == faces.different.T).all() and not faces.different.diagonal().any()
    assert faces.different.any()  # these 1.5 s show two people at once (the performer and the pianist)
    # The cache gives the same set back.
    again = mine_videos(Settings(), clip, tmp_path)
    assert (again.labels == faces.labels).all() and (again.different == faces.different).all()


def test_a_folder_without_videos_is_a_one_line_error(tmp_path):
    with pytest.raises(FacewatchError, match="no video file") as caught:
        video_files(tmp_path)
    assert "\n" not in str(caught.value)
