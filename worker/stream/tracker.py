"""Per-camera face tracking: detections on some frames, correlation tracking in between.

Association is greedy by IoU, highest first, with ties broken by position, so the same frames
always give the same tracks: a replay after a crash rebuilds the very tracks (and event ids)
it had. A track ends when no detection has matched it for ``max_age_s`` of frame time, and every
track of the camera ends at a scene cut (worker/stream/shots.py, tested on every frame, detection
frames or not): across a cut the nearest box belongs to someone else, and between detections the
old boxes would stand on the new picture.
Track ids are the birth frame's capture time in milliseconds and an index, unique per camera.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dlib
import numpy as np

from worker.stream.shots import ShotChangeDetector
from worker.vision.boxes import Box


@dataclass
class Track:
    """A face followed across frames of one camera."""

    track_id: str
    box: Box
    born_at: float  # capture time of the first frame, Unix seconds
    last_detected_at: float
    last_seen_at: float
    born_offset: int | None = None  # Kafka offset of the birth frame, for checkpoints
    detections: int = 1
    _correlation: dlib.correlation_tracker | None = field(default=None, repr=False)


@dataclass
class TrackUpdate:
    """What one frame did to a camera's tracks."""

    matched: list[tuple[Track, Box]]  # tracks with this frame's detections (new ones included)
    born: list[Track]
    ended: list[Track]  # lost: no detection for max_age_s
    scene_cut: bool = False  # this frame starts a new shot
    cut: list[Track] = field(default_factory=list)  # the tracks the scene cut ended


def _iou_matrix(a: list[Box], b: list[Box]) -> np.ndarray:
    if not a or not b:
        return np.zeros((len(a), len(b)))
    ab = np.array([x.as_list() for x in a], np.float64)
    bb = np.array([x.as_list() for x in b], np.float64)
    left = np.maximum(ab[:, None, 0], bb[None, :, 0])
    top = np.maximum(ab[:, None, 1], bb[None, :, 1])
    right = np.minimum(ab[:, None, 2], bb[None, :, 2])
    bottom = np.minimum(ab[:, None, 3], bb[None, :, 3])
    inter = np.clip(right - left + 1, 0, None) * np.clip(bottom - top + 1, 0, None)
    area_a = (ab[:, 2] - ab[:, 0] + 1) * (ab[:, 3] - ab[:, 1] + 1)
    area_b = (bb[:, 2] - bb[:, 0] + 1) * (bb[:, 3] - bb[:, 1] + 1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


class CameraTracker:
    """Tracks of one camera. Not thread-safe: one camera's frames are processed in order by one thread."""

    def __init__(
        self,
        camera_id: str,
        iou_threshold: float = 0.3,
        max_age_s: float = 1.5,
        correlation: bool = True,
        scene_cut_threshold: float | None = None,
    ):
        """``scene_cut_threshold``: end every track at a frame whose colours change this much (None: never)."""
        self.camera_id = camera_id
        self.iou_threshold = iou_threshold
        self.max_age_s = max_age_s
        self.correlation = correlation
        self.shots = ShotChangeDetector(scene_cut_threshold) if scene_cut_threshold is not None else None
        self.tracks: list[Track] = []

    def _scene_cut(self, image: np.ndarray) -> list[Track] | None:
        """The tracks a scene cut at ``image`` ends (all of them), or None when the shot goes on."""
        if self.shots is None or not self.shots.is_cut(image):
            return None
        return self.end_all()

    def _expire(self, now: float) -> list[Track]:
        ended = [t for t in self.tracks if now - t.last_detected_at > self.max_age_s]
        if ended:
            self.tracks = [t for t in self.tracks if t not in ended]
        return ended

    def detected(self, image: np.ndarray, timestamp: float, boxes: list[Box], offset: int | None = None) -> TrackUpdate:
        """A frame with detections: end every track at a scene cut, match the detections to tracks, start new
        tracks, end stale ones."""
        cut = self._scene_cut(image)
        ended = self._expire(timestamp)
        boxes = sorted(boxes, key=lambda b: (b.left, b.top, b.right, b.bottom))
        iou = _iou_matrix([t.box for t in self.tracks], boxes)
        rows, cols = np.nonzero(iou >= self.iou_threshold)
        pairs = sorted(zip(iou[rows, cols], rows, cols, strict=True), key=lambda p: (-p[0], p[1], p[2]))
        used_tracks: set[int] = set()
        used_boxes: set[int] = set()
        matched: list[tuple[Track, Box]] = []
        for _, i, j in pairs:
            if i in used_tracks or j in used_boxes:
                continue
            used_tracks.add(i)
            used_boxes.add(j)
            track = self.tracks[i]
            track.box = boxes[j]
            track.last_detected_at = track.last_seen_at = timestamp
            track.detections += 1
            matched.append((track, boxes[j]))
        born = []
        stamp = round(timestamp * 1000)
        for j, box in enumerate(boxes):
            if j in used_boxes:
                continue
            track = Track(f"{stamp}-{len(born)}", box, timestamp, timestamp, timestamp, offset)
            born.append(track)
            matched.append((track, box))
        self.tracks.extend(born)
        if self.correlation:
            for track, box in matched:
                track._correlation = dlib.correlation_tracker()
                track._correlation.start_track(image, dlib.rectangle(box.left, box.top, box.right, box.bottom))
        return TrackUpdate(matched, born, ended, cut is not None, cut or [])

    def followed(self, image: np.ndarray, timestamp: float) -> TrackUpdate:
        """A frame without detection: end every track at a scene cut, move tracks by correlation tracking, end
        stale ones."""
        cut = self._scene_cut(image)
        ended = self._expire(timestamp)
        for track in self.tracks:
            if track._correlation is not None:
                track._correlation.update(image)
                at = track._correlation.get_position()
                track.box = Box(round(at.left()), round(at.top()), round(at.right()), round(at.bottom()), 0.0)
            track.last_seen_at = timestamp
        return TrackUpdate([], [], ended, cut is not None, cut or [])

    def end_all(self) -> list[Track]:
        """Close every track (end of stream, checkpoint, shutdown)."""
        ended, self.tracks = self.tracks, []
        return ended
