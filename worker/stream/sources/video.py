"""Video files and RTSP cameras, decoded with PyAV (FFmpeg).

- File: every frame, in order; optionally looped; paced at the source's frame rate or as fast
  as the pipeline takes them. Frame times are the start time plus the presentation time, so
  tracking behaves the same at any speed. ``live`` plays it as a camera would (`facewatch bench
  streams`): paced, and like RTSP the newest frame wins when the pipeline is behind.
- RTSP: open and read timeouts; on any failure the camera is reopened with exponential
  backoff, forever. Decoding never waits for the pipeline: the newest frame replaces an
  unconsumed older one (counted as dropped), so a slow worker sees the present, not a backlog.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import av

from worker.config import RtspConfig
from worker.obs.metrics import Metrics
from worker.runtime.backoff import Backoff
from worker.stream.frames import Frame
from worker.stream.sources.base import Deliver, FrameSource
from worker.stream.urls import redact

log = logging.getLogger(__name__)


class NewestFrame:
    """A one-frame slot between a decoding thread and a delivering thread: the newest frame wins.

    A live camera does not wait for the pipeline: decoding goes on at the camera's pace, and a
    frame still waiting when the next one arrives is replaced (``on_drop`` counts it), so a slow
    worker sees the present, not a backlog.
    """

    def __init__(self, on_drop: Callable[[], None], stopping: Callable[[], bool]) -> None:
        self._on_drop = on_drop
        self._stopping = stopping
        self._slot: Frame | None = None
        self._ready = threading.Condition()
        self._closed = False

    def offer(self, frame: Frame) -> None:
        """Put the newest frame in the slot (the one it replaces, if any, is dropped)."""
        with self._ready:
            if self._slot is not None:
                self._on_drop()
            self._slot = frame
            self._ready.notify()

    def close(self) -> None:
        """No more frames: the delivering loop ends once the slot is empty."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def deliver_loop(self, deliver: Deliver) -> None:
        """Hand each frame to ``deliver`` (which may block) until closed or stopping and empty."""
        while True:
            with self._ready:
                while self._slot is None and not self._closed and not self._stopping():
                    self._ready.wait(0.5)
                if self._slot is None:
                    return
                frame, self._slot = self._slot, None
            deliver(frame)


class FileSource(FrameSource):
    """Frames of a video file; ``realtime`` paces them at the file's frame rate.

    ``live`` paces them too, and plays the file as a live camera: decoding never waits for the
    pipeline, and a frame the pipeline has not taken when the next is due is dropped and counted
    (``facewatch_frames_dropped_total{reason="behind"}``), as for RTSP.
    """

    def __init__(
        self,
        camera_id: str,
        path: str | Path,
        loop: bool = False,
        realtime: bool = False,
        metrics: Metrics | None = None,
        live: bool = False,
    ) -> None:
        super().__init__()
        self.metrics = metrics
        self.name = camera_id
        self.camera_id = camera_id
        self.path = Path(path)
        self.loop = loop
        self.realtime = realtime or live
        self.live = live
        self.dropped = 0  # live: frames replaced by a newer one before the pipeline took them
        self._open = False

    @property
    def connected(self) -> bool:
        return self._open

    def _drop(self) -> None:
        self.dropped += 1  # only the decoding thread calls it (under the slot's lock)
        if self.metrics is not None:
            self.metrics.frames_dropped.labels(self.camera_id, "behind").inc()

    def _run(self, deliver: Deliver) -> None:
        if not self.live:
            self._play(deliver)
            return
        slot = NewestFrame(self._drop, lambda: self.stopping)
        delivery = threading.Thread(
            target=slot.deliver_loop, args=(deliver,), name=f"deliver-{self.camera_id}", daemon=True
        )
        delivery.start()
        try:
            self._play(slot.offer)
        finally:
            slot.close()
            delivery.join()  # the last frame is delivered before the source counts as finished

    def _play(self, deliver: Deliver) -> None:
        start = time.time()
        offset = 0.0  # frame time already played by earlier loops
        seq = 0
        while not self.stopping:
            try:
                container = av.open(str(self.path))
            except (av.error.FFmpegError, OSError) as exc:
                log.error("camera %s: cannot open %s: %s", self.camera_id, self.path, exc)
                return
            self._open = True
            last = 0.0
            try:
                stream = container.streams.video[0]
                for video_frame in container.decode(stream):
                    if self.stopping:
                        return
                    pts = float(video_frame.time) if video_frame.time is not None else last
                    last = pts
                    at = start + offset + pts
                    if self.realtime:
                        time.sleep(max(0.0, at - time.time()))
                    if self.metrics is not None:
                        self.metrics.frames_received.labels(self.camera_id).inc()
                    deliver(Frame(self.camera_id, seq, at, video_frame.to_ndarray(format="rgb24")))
                    seq += 1
            except av.error.FFmpegError as exc:
                log.error("camera %s: decoding %s failed: %s", self.camera_id, self.path, exc)
                return
            finally:
                container.close()
                self._open = False
            if not self.loop:
                return
            rate = float(stream.average_rate or 25)
            offset += last + 1.0 / rate


class RtspSource(FrameSource):
    """An RTSP camera: reconnects forever; the newest decoded frame wins."""

    def __init__(
        self,
        camera_id: str,
        url: str,
        metrics: Metrics,
        open_timeout_s: float = 5.0,
        read_timeout_s: float = 5.0,
        transport: str = "tcp",
        max_backoff_s: float = 30.0,
    ) -> None:
        super().__init__()
        self.name = camera_id
        self.camera_id = camera_id
        self.url = url
        self.metrics = metrics
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.transport = transport
        self.backoff = Backoff(maximum=max_backoff_s)
        self._slot = NewestFrame(self._drop, lambda: self.stopping)
        self._open = False
        self._delivery: threading.Thread | None = None

    @classmethod
    def from_config(cls, camera_id: str, url: str, config: RtspConfig, metrics: Metrics) -> RtspSource:
        """A camera with the timeouts, transport and backoff of the ``rtsp`` section."""
        return cls(
            camera_id,
            url,
            metrics,
            open_timeout_s=config.open_timeout_s,
            read_timeout_s=config.read_timeout_s,
            transport=config.transport,
            max_backoff_s=config.max_backoff_s,
        )

    @property
    def connected(self) -> bool:
        return self._open

    def _set_open(self, value: bool) -> None:
        self._open = value
        self.metrics.camera_connected.labels(self.camera_id).set(1 if value else 0)

    def _drop(self) -> None:
        self.metrics.frames_dropped.labels(self.camera_id, "behind").inc()

    def _decode(self, container: av.container.InputContainer, seq: int) -> int:
        for video_frame in container.decode(video=0):
            if self.stopping:
                break
            self.backoff.reset()
            self.metrics.frames_received.labels(self.camera_id).inc()
            self._slot.offer(Frame(self.camera_id, seq, time.time(), video_frame.to_ndarray(format="rgb24")))
            seq += 1
        return seq

    def _run(self, deliver: Deliver) -> None:
        self._delivery = threading.Thread(
            target=self._slot.deliver_loop, args=(deliver,), name=f"deliver-{self.camera_id}", daemon=True
        )
        self._delivery.start()
        seq = 0
        self.metrics.camera_connected.labels(self.camera_id).set(0)
        try:
            while not self.stopping:
                try:
                    container = av.open(
                        self.url,
                        options={"rtsp_transport": self.transport},
                        timeout=(self.open_timeout_s, self.read_timeout_s),
                    )
                except (av.error.FFmpegError, OSError) as exc:
                    self._retry(f"cannot open: {exc}")
                    continue
                self._set_open(True)
                log.info("camera %s: connected to %s", self.camera_id, redact(self.url))
                try:
                    seq = self._decode(container, seq)
                    reason = "stream ended"
                except (av.error.FFmpegError, OSError) as exc:
                    reason = f"read failed: {exc}"
                finally:
                    container.close()
                    self._set_open(False)
                if not self.stopping:
                    self._retry(reason)
        finally:
            self._slot.close()
            self._delivery.join(5.0)

    def _retry(self, reason: str) -> None:
        delay = self.backoff.next_delay()
        log.warning("camera %s: %s; reconnecting in %.1f s", self.camera_id, redact(reason), delay)
        self.metrics.rtsp_reconnects.labels(self.camera_id).inc()
        self._stop.wait(delay)
