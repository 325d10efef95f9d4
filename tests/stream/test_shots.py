"""Scene cuts: the shot-change signal on real pictures, and the tracks a cut ends (tracker and face stage)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.stream.doubles import chips_by_position, identified, planned_detect
from worker.config import PipelineConfig, TrackingConfig
from worker.obs.metrics import Metrics
from worker.samples import sample_paths
from worker.stream.commits import Commits
from worker.stream.frames import Frame
from worker.stream.shots import ShotChangeDetector, shot_change, shot_signature
from worker.stream.stages import FaceStage
from worker.stream.tracker import CameraTracker
from worker.vision.boxes import Box
from worker.vision.image import load_image

THRESHOLD = TrackingConfig().scene_cut_threshold


def _picture(name: str, width: int = 320, height: int = 240) -> np.ndarray:
    """A real photograph (shipped in matplotlib's and scikit-image's wheels), as a frame of the given size."""
    return cv2.resize(load_image(sample_paths()[name]), (width, height), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    return _picture("Grace Hopper")


@pytest.fixture(scope="module")
def collins() -> np.ndarray:
    return _picture("Eileen Collins")


def _moved(image: np.ndarray, dx: int, brighter: float = 1.0) -> np.ndarray:
    """The same scene a moment later: shifted sideways (a pan, or a person walking) and relit."""
    shifted = np.roll(image, dx, axis=1)
    return np.clip(shifted.astype(np.float32) * brighter, 0, 255).astype(np.uint8)


def test_signature_is_a_histogram_of_any_frame_size():
    for shape in [(1080, 1920, 3), (240, 320, 3), (20, 30, 3), (240, 320)]:
        image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        signature = shot_signature(image)
        assert signature.shape == (128,) and abs(float(signature.sum()) - 1.0) < 1e-5


def test_a_cut_between_two_scenes_and_not_within_one(hopper, collins):
    assert shot_change(shot_signature(hopper), shot_signature(hopper)) == 0.0
    assert shot_change(shot_signature(hopper), shot_signature(collins)) >= THRESHOLD
    for dx, brighter in [(8, 1.0), (30, 1.0), (0, 1.3), (16, 0.8)]:
        change = shot_change(shot_signature(hopper), shot_signature(_moved(hopper, dx, brighter)))
        assert change < THRESHOLD / 2, (dx, brighter, change)


def test_detector_compares_each_frame_with_the_one_before(hopper, collins):
    shots = ShotChangeDetector(THRESHOLD)
    seen = [shots.is_cut(image) for image in [collins, hopper, _moved(hopper, 10), _moved(hopper, 20), collins]]
    assert seen == [False, True, False, False, True]  # the first frame has nothing to compare with


def _box(left: int, top: int, size: int = 60) -> Box:
    return Box(left, top, left + size - 1, top + size - 1, 1.0)


def test_a_scene_cut_between_detections_ends_every_track(hopper, collins):
    tracker = CameraTracker("cam", correlation=False, scene_cut_threshold=THRESHOLD)
    first = tracker.detected(hopper, 1.0, [_box(100, 40), _box(200, 60)])
    assert len(first.born) == 2 and not first.scene_cut
    assert tracker.followed(_moved(hopper, 4), 1.04).cut == []
    cut = tracker.followed(collins, 1.08)  # a frame without detection: the old boxes must not stand on it
    assert cut.scene_cut and {t.track_id for t in cut.cut} == {"1000-0", "1000-1"} and cut.ended == []
    assert tracker.tracks == []
    after = tracker.detected(collins, 1.12, [_box(102, 42)])  # someone else at the same place
    assert [t.track_id for t in after.born] == ["1120-0"] and not after.scene_cut


def test_without_scene_cuts_iou_hands_the_track_to_whoever_stands_there(hopper, collins):
    """What the Hamilton clip showed: the old track goes on, on another person."""
    tracker = CameraTracker("cam", correlation=False)
    tracker.detected(hopper, 1.0, [_box(100, 40)])
    tracker.followed(collins, 1.04)
    after = tracker.detected(collins, 1.08, [_box(102, 42)])
    assert after.born == [] and [t.track_id for t, _ in after.matched] == ["1000-0"]


def _stage(metrics: Metrics, tracking: TrackingConfig) -> FaceStage:
    return FaceStage(
        planned_detect,
        chips_by_position,
        lambda chips: identified(lambda e: [], chips),
        PipelineConfig(detect_every=3),
        tracking,
        Commits(),
        metrics,
    )


def _frame(seq: int, picture: np.ndarray, faces: int) -> Frame:
    image = picture.copy()
    image[0, 0, 0] = faces  # the planned detector's instruction
    return Frame("cam", seq, 100.0 + seq * 0.04, image)


@pytest.mark.parametrize("scene_cuts", [True, False])
def test_face_stage_ends_the_tracks_at_a_cut_and_counts_it(hopper, collins, scene_cuts):
    metrics = Metrics()
    stage = _stage(metrics, TrackingConfig(correlation=False, scene_cuts=scene_cuts))
    works = [stage.process(_frame(seq, hopper if seq < 4 else collins, 2)) for seq in range(7)]
    ended = [(work.frame.seq, e.reason, e.track.track_id) for work in works for e in work.ended]
    cuts = metrics.scene_cuts.labels(metrics.camera_label("cam"))._value.get()
    if scene_cuts:
        # Frame 4 is no detection frame (detect_every 3): the cut ends the tracks there, frame 6 starts new ones.
        assert ended == [(4, "scene_cut", "100000-0"), (4, "scene_cut", "100000-1")] and cuts == 1
        assert [len(work.born) for work in works] == [2, 0, 0, 0, 0, 0, 2]
    else:
        assert ended == [] and cuts == 0
        assert [len(work.born) for work in works] == [2, 0, 0, 0, 0, 0, 0]
