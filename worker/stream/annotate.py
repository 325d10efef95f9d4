"""`facewatch annotate`: what the worker decided, drawn on the frames of a video or an image.

The frames go through the worker's own streaming pipeline (worker/stream/pipeline.py: detection
every ``pipeline.detect_every`` frames, tracking, micro-batched embedding, watchlist search and the
per-track decision rules of worker/stream/decisions.py), not a separate per-frame identify loop, so
the picture shows exactly what the worker would have published. The pipeline's frame observer hands
over, for each frame in order, the open tracks with their boxes, the watchlist's answer for each
face detected in it, what each track has been recognised as so far, and the events the frame
completed; this module keeps a little per-track memory (the last answer, the FaceMatch) and draws.

Each box is labelled with the track id (the same as in the events) and a status line:

- ``match 0.97 d=0.31`` (green): the track was recognised; confidence and distance are the FaceMatch's;
- ``deciding: match 0.95`` (yellow): its faces match someone, not yet enough votes (decisions.min_faces);
- ``uncertain 0.91`` (yellow): near someone on the list (the candidate's name with "?"), but not safely;
- ``unknown 0.85`` (red): nobody on the list is near;
- ``tracking`` (grey): no face of the track has voted yet (too small or poor: decisions.min_quality).

Frame times are the video's own clock (presentation time, counted from its first frame), so the
same video gives the same tracks, ids and pictures on every run.
"""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from worker.config import Settings
from worker.errors import FacewatchError
from worker.obs.metrics import Metrics
from worker.stream.events import AnyEvent, FaceMatch, TrackEnded
from worker.stream.frames import Frame
from worker.stream.media import write_h264_mp4
from worker.stream.sinks import EventSink
from worker.stream.stages import FrameDecided, FrameObserver
from worker.vision.boxes import Box
from worker.vision.image import load_image
from worker.watchlist.identify import MATCH, UNCERTAIN, Identification

log = logging.getLogger(__name__)

CAMERA = "annotate"
GREEN, YELLOW, RED, GREY = (40, 200, 60), (250, 200, 20), (230, 40, 40), (170, 170, 170)  # RGB
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class _TrackMemory:
    """What the drawing remembers of a track between frames (its last answer and its FaceMatch)."""

    last: Identification | None = None
    faces_seen: int = 0
    match: FaceMatch | None = None


@dataclass(frozen=True)
class Label:
    """What is drawn for one tracked face."""

    box: Box
    track_id: str
    name: str | None
    status: str
    colour: tuple[int, int, int]


@dataclass
class Annotator:
    """Turns each observed frame into labels and draws them; called in frame order (by the decide thread)."""

    tracks: dict[str, _TrackMemory] = field(default_factory=dict)

    def labels(self, seen: FrameDecided) -> list[Label]:
        """The labels of a frame's tracked faces, after taking in what the frame decided."""
        for event in seen.events:
            if isinstance(event, FaceMatch):
                self.tracks.setdefault(event.track_id, _TrackMemory()).match = event
            elif isinstance(event, TrackEnded):
                self.tracks.pop(event.track_id, None)  # ended: its memory goes with it
        for track_id, answer in seen.faces.items():
            memory = self.tracks.setdefault(track_id, _TrackMemory())
            if answer is not None:
                memory.last = answer
                memory.faces_seen += 1
        return [
            self._label(track.track_id, box, seen.decided.get(track.track_id))
            for track, box in sorted(seen.present, key=lambda item: item[0].track_id)
        ]

    def _label(self, track_id: str, box: Box, decided: tuple[str, str] | None) -> Label:
        memory = self.tracks.get(track_id) or _TrackMemory()
        match, last = memory.match, memory.last
        if decided is not None:
            name = decided[1]
            if match is not None and match.identity_id == decided[0]:
                return Label(box, track_id, name, f"match {match.score:.2f} d={match.distance:.2f}", GREEN)
            # Recognised, but the re-alert cooldown held its FaceMatch back: no event, same decision.
            return Label(box, track_id, name, "match (cooldown)", GREEN)
        if last is None:
            return Label(box, track_id, None, "tracking", GREY)
        if last.status == MATCH:
            return Label(box, track_id, f"{last.name}?", f"deciding: match {last.score:.2f}", YELLOW)
        if last.status == UNCERTAIN:
            return Label(box, track_id, f"{last.candidate_name}?", f"uncertain {last.score:.2f}", YELLOW)
        return Label(box, track_id, None, f"unknown {last.score:.2f}", RED)


def draw(image: np.ndarray, labels: list[Label], caption: str | None = None) -> np.ndarray:
    """A copy of the RGB image with each label's box and text (and a caption in the top-left corner)."""
    out = np.ascontiguousarray(image.copy())
    height, width = out.shape[:2]
    scale = max(0.4, min(width, height) / 900.0)  # text readable on small frames, not huge on big ones
    thickness = max(1, round(scale * 2))
    for label in labels:
        left, top, right, bottom = label.box.clipped(width, height).as_list()
        cv2.rectangle(out, (left, top), (right, bottom), label.colour, thickness + 1)
        lines = [label.track_id if label.name is None else f"{label.track_id} {label.name}", label.status]
        _text_block(out, lines, left, bottom + 2, label.colour, scale, thickness, below=True)
    if caption:
        _text_block(out, [caption], 0, 0, (255, 255, 255), scale, thickness, below=True)
    return out


def _text_block(
    image: np.ndarray,
    lines: list[str],
    x: int,
    y: int,
    colour: tuple[int, int, int],
    scale: float,
    thickness: int,
    below: bool,
) -> None:
    """Lines of text on a dark band, at (x, y) going down; moved up inside the image when it would leave it."""
    sizes = [cv2.getTextSize(line, _FONT, scale, thickness) for line in lines]
    line_height = max(h + baseline for (_, h), baseline in sizes) + 4
    block_width = max(w for (w, _), _ in sizes) + 8
    height, width = image.shape[:2]
    block_height = line_height * len(lines) + 4
    x = int(np.clip(x, 0, max(0, width - block_width)))
    y = int(np.clip(y, 0, max(0, height - block_height)))
    band = image[y : y + block_height, x : x + block_width]
    band[:] = (band * 0.35).astype(np.uint8)  # darkened, not black: the picture stays visible
    for row, (line, ((_, h), _)) in enumerate(zip(lines, sizes, strict=True)):
        baseline_y = y + 2 + row * line_height + h + 2
        cv2.putText(image, line, (x + 4, baseline_y), _FONT, scale, colour, thickness, cv2.LINE_AA)


class _KeptEvents(EventSink):
    """Keeps the pipeline's events, in order (the last TrackEndeds come after the last frame)."""

    name = "annotate"

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(metrics)
        self.events: list[AnyEvent] = []  # appended by the one decide thread of the one camera

    def publish(self, event: AnyEvent, frame_received: float) -> None:
        self.events.append(event)
        self._delivered(event, frame_received)

    def flush(self, timeout: float = 30.0) -> bool:
        return True


@dataclass(frozen=True)
class VideoInfo:
    """What the writer needs to know of the input video."""

    fps: Fraction
    frames: int  # as the container says; 0 when it does not


def video_info(path: Path) -> VideoInfo:
    """Frame rate and frame count of a video file (a clear error when it cannot be opened)."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return VideoInfo(Fraction(stream.average_rate or 25), int(stream.frames or 0))
    except (av.error.FFmpegError, OSError, IndexError) as exc:
        raise FacewatchError(f"cannot open video {path}: {exc}") from None


def video_frames(path: Path) -> Iterator[Frame]:
    """The video's frames as the pipeline takes them: RGB, timed by presentation time from the first frame."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise FacewatchError(f"cannot open video {path}: {exc}") from None
    with container:
        first: float | None = None
        last = 0.0
        try:
            for seq, frame in enumerate(container.decode(video=0)):
                if frame.time is not None:
                    # Many files start at a non-zero time; from 0, --at, captions and track ids agree.
                    first = float(frame.time) if first is None else first
                    last = float(frame.time) - first
                yield Frame(CAMERA, seq, last, frame.to_ndarray(format="rgb24"))
        except av.error.FFmpegError as exc:
            raise FacewatchError(f"decoding {path} failed: {exc}") from None


def _even(image: np.ndarray) -> np.ndarray:
    """H.264 (yuv420p) needs even sizes: drop a last odd row or column."""
    height, width = image.shape[:2]
    return image[: height - height % 2, : width - width % 2]


@dataclass
class AnnotateResult:
    """What a run drew and decided."""

    frames: int
    events: list[AnyEvent]


def _run_pipeline(
    settings: Settings, frames: Iterator[Frame], on_frame: FrameObserver, stop: threading.Event
) -> AnnotateResult:
    """Feed ``frames`` to the worker's pipeline with ``on_frame`` as its observer, until ``stop`` is set."""
    from worker.recognition import FaceRecognizer
    from worker.stream.pipeline import Pipeline
    from worker.watchlist.live import Watchlist

    store = Path(settings.watchlist.store)
    if not store.is_file():
        raise FacewatchError(f"watchlist store {store} does not exist (enroll someone first: facewatch watchlist add)")
    metrics = Metrics()
    recognizer = FaceRecognizer(settings)
    with tempfile.TemporaryDirectory(prefix="facewatch-annotate-") as folder:
        if settings.watchlist.index_path is None:
            # Our own index file: annotating must not rewrite the one a running worker may be using.
            settings = settings.model_copy(deep=True)
            settings.watchlist.index_path = Path(folder) / "watchlist.index"
        watchlist = Watchlist(settings, recognizer.embedder.model_version, metrics)
        sink = _KeptEvents(metrics)
        pipeline = Pipeline.from_settings(
            settings,
            recognizer,
            watchlist,
            [sink],
            metrics,
            observer=on_frame,
        )
        submitted = 0
        try:
            for frame in frames:
                if stop.is_set():
                    break
                pipeline.submit(frame)
                submitted += 1
            pipeline.end_camera(CAMERA, "end_of_stream")
            pipeline.wait_idle(24 * 3600)
        finally:
            pipeline.close(60)
            watchlist.close()
    return AnnotateResult(submitted, sink.events)


def annotate_image(settings: Settings, source: Path, out: Path) -> AnnotateResult:
    """Run the pipeline on one image (one frame) and write it annotated (format by ``out``'s suffix)."""
    image = load_image(source, max_pixels=settings.images.max_pixels)
    annotator = Annotator()
    drawn: list[np.ndarray] = []

    def on_frame(seen: FrameDecided) -> None:
        drawn.append(draw(seen.frame.image, annotator.labels(seen)))

    result = _run_pipeline(settings, iter([Frame(CAMERA, 0, 0.0, image)]), on_frame, threading.Event())
    _write_image(out, drawn[0])
    return result


def _write_image(out: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise FacewatchError(f"cannot write {out} (an image suffix OpenCV knows: .png, .jpg, ...)")


def annotate_video(settings: Settings, source: Path, out: Path, at: float | None = None) -> AnnotateResult:
    """Run the pipeline on a video and write every frame annotated as H.264 MP4, or, with ``at`` (seconds),
    only the frame shown at that time as an image (the frames before it still go through the pipeline)."""
    info = video_info(source)
    annotator = Annotator()
    stop = threading.Event()
    if at is not None:
        still: list[np.ndarray] = []
        wanted = max(0, round(at * float(info.fps)))

        def on_still(seen: FrameDecided) -> None:
            labels = annotator.labels(seen)
            if seen.frame.seq == wanted:
                caption = f"frame {seen.frame.seq}  {seen.frame.timestamp:.2f} s"
                still.append(draw(seen.frame.image, labels, caption))
                stop.set()  # the frames after it are not needed

        result = _run_pipeline(settings, video_frames(source), on_still, stop)
        if not still:
            raise FacewatchError(
                f"{source} has no frame at {at:g} s ({result.frames} frames at {float(info.fps):g} fps)"
            )
        _write_image(out, still[0])
        return result

    # The observer runs on the pipeline's decide thread; the encoder runs on its own and takes the
    # drawn frames in order through a bounded queue (back-pressure, bounded memory).
    drawn: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=32)
    failure: list[BaseException] = []

    def on_frame(seen: FrameDecided) -> None:
        labels = annotator.labels(seen)
        caption = f"frame {seen.frame.seq}  {seen.frame.timestamp:.2f} s"
        if not failure:
            drawn.put(_even(draw(seen.frame.image, labels, caption)))

    ended = threading.Event()

    def encoded() -> Iterator[np.ndarray]:
        while (image := drawn.get()) is not None:
            yield image
        ended.set()

    def encode() -> None:
        try:
            write_h264_mp4(out, encoded(), fps=info.fps)
        except BaseException as exc:  # reported by the main thread; drain so the pipeline never blocks
            failure.append(exc)
            stop.set()
            while not ended.is_set() and drawn.get() is not None:
                pass

    writer = threading.Thread(target=encode, name="annotate-encoder", daemon=True)
    writer.start()
    try:
        result = _run_pipeline(settings, video_frames(source), on_frame, stop)
    finally:
        drawn.put(None)
        writer.join()
    if failure:
        raise FacewatchError(f"cannot write {out}: {failure[0]}")
    return result
