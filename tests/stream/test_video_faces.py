"""Reading videos for enrollment: sampling a file and an RTSP stream, the dominant track, bad videos."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.infra.media import color_bars, write_h264_mp4
from worker.config import load_settings
from worker.errors import VideoError
from worker.recognition import FaceRecognizer
from worker.stream.video_faces import FrameSampler, VideoFaceReader
from worker.vision.image import load_image
from worker.watchlist.enroll import EnrollRules

CLIP_FRAMES = 275  # short_hamilton_clip.mp4, 29.97 fps


@pytest.fixture(scope="module")
def recognizer() -> FaceRecognizer:
    return FaceRecognizer(load_settings(None, {}))


@pytest.fixture(scope="module")
def clip(shared_dir: Path) -> Path:
    return shared_dir / "data" / "video" / "short_hamilton_clip.mp4"


@pytest.fixture(scope="module")
def miranda(recognizer: FaceRecognizer, shared_dir: Path) -> np.ndarray:
    """The embedding of Lin-Manuel Miranda's still."""
    faces = recognizer.analyze([load_image(shared_dir / "data" / "stills" / "lin-manuel-miranda.png")])[0]
    return faces.embeddings[faces.largest()]


def test_a_file_is_sampled_evenly_over_its_length(clip: Path) -> None:
    with FrameSampler(str(clip), frames=50, seconds=1.0) as sampler:
        samples = list(sampler)
    # Every 6th of 275 frames (ceil(275 / 50)): 46 frames from start to end; `seconds` is for live streams.
    assert sampler.step == 6 and sampler.expected == len(samples) == 46
    times = np.array([at for at, _ in samples])
    assert times[0] < 1.0 and times[-1] > 8.5 and np.all(np.diff(times) > 0.19)
    assert samples[0][1].shape == (360, 640, 3) and samples[0][1].dtype == np.uint8
    with FrameSampler(str(clip), frames=1000, seconds=1.0) as sampler:
        assert sampler.step == 1 and sampler.expected == CLIP_FRAMES


def test_the_dominant_track_of_the_clip_is_miranda(recognizer: FaceRecognizer, clip: Path, miranda: np.ndarray):
    reader = VideoFaceReader(recognizer)
    found = reader.read(str(clip), EnrollRules(video_frames=60))
    assert found.source == str(clip) and found.frames == 55  # every 5th frame
    # Several tracks (Miranda across scene cuts, a blurred face in the audience); the first is the longest.
    assert len(found.tracks) >= 2 and found.tracks == sorted(found.tracks, reverse=True)
    assert found.tracks[0] == len(found.boxes) == len(found.times) == len(found.chips) >= 10
    assert np.all(np.diff(found.times) > 0)
    distances = np.linalg.norm(recognizer.embedder.embed(found.chips) - miranda, axis=1)
    assert np.median(distances) < 0.55, distances  # his faces, not the audience's


def test_a_video_without_faces_gives_no_faces(recognizer: FaceRecognizer, tmp_path: Path) -> None:
    bars = tmp_path / "bars.mp4"
    write_h264_mp4(bars, color_bars(30), fps=25)
    found = VideoFaceReader(recognizer).read(str(bars), EnrollRules(video_frames=10))
    assert found.frames == 10 and found.tracks == [] and found.boxes == [] and found.chips.shape == (0, 150, 150, 3)


def test_unreadable_videos_raise_one_line_errors(recognizer: FaceRecognizer, tmp_path: Path) -> None:
    reader = VideoFaceReader(recognizer)
    with pytest.raises(VideoError, match=r"missing\.mp4: no such file"):
        reader.read(str(tmp_path / "missing.mp4"), EnrollRules())
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    with pytest.raises(VideoError, match=r"fake\.mp4: cannot open video") as error:
        reader.read(str(fake), EnrollRules())
    assert "\n" not in str(error.value)
    with pytest.raises(VideoError, match=r"rtsp://viewer:\*\*\*@127\.0\.0\.1:9/cam: cannot open video"):
        reader.read("rtsp://viewer:secret@127.0.0.1:9/cam", EnrollRules())  # nothing listens on port 9
    assert reader.name("rtsp://viewer:secret@cam/stream") == "rtsp://viewer:***@cam/stream"


def test_rtsp_is_read_for_a_bounded_time(
    rtsp_server_factory, recognizer: FaceRecognizer, clip: Path, shared_dir: Path
) -> None:
    server = rtsp_server_factory(clip, mount="/hamilton")
    reader = VideoFaceReader(recognizer)
    started = time.monotonic()
    # 1000 frames could not be analysed in 5 s on a CPU: the reading time ends it.
    found = reader.read(server.url, EnrollRules(video_frames=1000, video_seconds=5.0))
    assert time.monotonic() - started < 5.0 + 10.0  # plus connecting and the last batch
    assert 0 < found.frames < 1000 and found.source == server.url
    assert found.tracks and np.all(np.diff(found.times) > 0) and found.times[-1] <= 5.0
    # The dominant track is Miranda: nearer his still than anyone else's.
    stills = sorted((shared_dir / "data" / "stills").glob("*.*"))
    people = [p for p in stills if p.stem != "two_people"]
    analysed = recognizer.analyze([load_image(path) for path in people])
    embeddings = np.stack([faces.embeddings[faces.largest()] for faces in analysed])
    track = recognizer.embedder.embed(found.chips)
    median = np.median(np.linalg.norm(track[:, None] - embeddings[None], axis=2), axis=0)
    assert people[int(median.argmin())].stem == "lin-manuel-miranda", median
