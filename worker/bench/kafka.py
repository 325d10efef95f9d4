"""`facewatch bench kafka`: what the frames consumer costs, next to what the models cost, per 720p frame.

A topic on a real broker is filled with JPEG frames of the clip, scaled to ``size`` (1280x720 by
default) and encoded as `facewatch publish` encodes them (quality 90, its producer's settings,
gzip included). Then, in turns (``rounds``, the median reported), with no models running:

- ``kafka-python``: a bare KafkaConsumer in a consumer group, with the frames consumer's fetch
  settings, polling every record (fetch, decompression, record parsing): the Kafka client alone;
- ``frame-source``: the worker's KafkaFrameSource (worker/stream/sources/kafka.py), delivering to
  a pipeline that finishes each frame at once: the client plus the commit protocol, header checks
  and the JPEG decode into an RGB array, committing every ``frames.commit_interval_s``;
- ``jpeg-decode``: the same frame messages decoded from memory (decode_frame_message), no Kafka:
  what of ``frame-source`` is the image, not the client.

Each reports frames/s and MB/s (JPEG bytes) from the moment its partition is assigned (the group
joined: fetching begins) to its last frame, and CPU: the process's CPU time over the same span
(every thread: kafka-python's IO thread included) per frame, and as a share of one core. The
broker's own CPU is not counted (another process).

``models``: the streaming pipeline (worker/bench/pipeline.py's run_facewatch, product defaults,
``threads`` torch threads) on the same frames as a video, with its stage times per frame: what a
worker's core spends on the models (wall times of the stages' threads, waiting for the embedding
batch left out: CPU time on a quiet machine, more on a busy one). The last column says which
limits a one-core worker first.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worker.config import FramesConfig, KafkaConfig, Settings
from worker.errors import FacewatchError

log = logging.getLogger(__name__)

CONSUME_TIMEOUT_S = 600.0


def scaled_frames(video: Path, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """The clip's first ``count`` frames (looping the clip if it is shorter), RGB, resized to ``size`` (w, h)."""
    import cv2

    from worker.bench.pipeline import video_frames

    clip = [cv2.resize(image, size, interpolation=cv2.INTER_LINEAR) for _, _, image in video_frames(video, count)]
    if not clip:
        raise FacewatchError(f"no frames in {video}")
    return [clip[i % len(clip)] for i in range(count)]


def _messages(images: Sequence[np.ndarray]) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    from worker.stream.frames import encode_frame_message

    start = time.time() - len(images) / 30.0
    return [encode_frame_message("cam-0", seq, start + seq / 30.0, image, 90) for seq, image in enumerate(images)]


def fill(bootstrap: str, topic: str, messages: Sequence[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
    """Create a one-partition topic and write the messages with the publish producer's settings."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from worker.kafka_clients import producer_settings

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        admin.create_topics([NewTopic(f"{topic}.dead-letter", num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(**producer_settings(KafkaConfig(bootstrap_servers=bootstrap)))
    for key, value, headers in messages:
        producer.send(topic, key=key, value=value, headers=headers, partition=0)
    producer.flush(300)
    producer.close()


class _Span:
    """Wall and process CPU time from the start (partitions assigned: fetching begins) to the last frame."""

    def __init__(self) -> None:
        self.count = 0
        self.first: tuple[float, float] | None = None
        self.last: tuple[float, float] | None = None

    def start(self) -> None:
        if self.first is None:
            self.first = (time.perf_counter(), time.process_time())

    def tick(self) -> None:
        self.last = (time.perf_counter(), time.process_time())
        self.count += 1

    def row(self, impl: str, frames: int, jpeg_bytes: int) -> dict[str, Any]:
        assert self.first is not None and self.last is not None
        per = max(1, self.count)
        wall = max(1e-9, self.last[0] - self.first[0])
        cpu = self.last[1] - self.first[1]
        return {
            "bench": "kafka",
            "impl": impl,
            "frames": frames,
            "frames_per_s": round(per / wall, 1),
            "mb_per_s": round(jpeg_bytes / frames * per / wall / 1e6, 1),
            "cpu_ms_per_frame": round(1000.0 * cpu / per, 2),
            "cpu_share": round(cpu / wall, 2),
        }


def _wait(span: _Span, frames: int, what: str) -> None:
    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    while span.count < frames:
        if time.monotonic() > deadline:
            raise FacewatchError(f"bench kafka: {what} took {span.count} of {frames} frames in {CONSUME_TIMEOUT_S} s")
        time.sleep(0.01)


def consume_bare(bootstrap: str, topic: str, frames: int) -> _Span:
    """Every record through a bare kafka-python consumer in a fresh group (the frames consumer's fetch sizes)."""
    from kafka import ConsumerRebalanceListener, KafkaConsumer

    from worker.kafka_clients import common_settings

    span = _Span()

    class Assigned(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        def on_partitions_assigned(self, assigned: Any) -> None:
            span.start()  # the group is joined: from here on the consumer fetches

    settings = FramesConfig()
    consumer = KafkaConsumer(
        **common_settings(KafkaConfig(bootstrap_servers=bootstrap)),
        group_id=f"bench-kafka-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.max_poll_records,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_partition_fetch_bytes=settings.max_message_bytes + 65536,
        fetch_max_bytes=max(52428800, settings.max_message_bytes + 65536),
    )
    try:
        consumer.subscribe([topic], listener=Assigned())
        deadline = time.monotonic() + CONSUME_TIMEOUT_S
        while span.count < frames and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for _ in records:
                    span.tick()
    finally:
        consumer.close(autocommit=False)
    if span.count < frames:
        raise FacewatchError(f"bench kafka: the bare consumer took {span.count} of {frames} frames")
    return span


def consume_source(bootstrap: str, topic: str, frames: int) -> _Span:
    """Every frame through the worker's KafkaFrameSource, finished at once, in a fresh group."""
    from worker.obs.metrics import Metrics
    from worker.stream.commits import KafkaCommits
    from worker.stream.dead_letters import DeadLetters
    from worker.stream.frames import Frame
    from worker.stream.sources.kafka import KafkaFrameSource

    metrics = Metrics()
    kafka = KafkaConfig(bootstrap_servers=bootstrap)
    config = FramesConfig(
        topic=topic,
        dead_letter_topic=f"{topic}.dead-letter",
        group_id=f"bench-kafka-{uuid.uuid4().hex[:8]}",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    span = _Span()

    class TimedCommits(KafkaCommits):
        def assigned(self, partitions: Any) -> None:
            span.start()  # called by the source's rebalance listener: the group is joined, fetching begins
            super().assigned(partitions)

    dead_letters = DeadLetters.from_config(kafka, config, metrics, threading.Event())
    commits = TimedCommits(config.checkpoint_interval, [dead_letters])
    source = KafkaFrameSource(kafka, config, Settings().images.max_pixels, metrics, commits, dead_letters)

    def deliver(frame: Frame) -> None:
        checkpoints = commits.partition(frame.position)
        if checkpoints is not None and frame.position is not None:
            checkpoints.done(frame.position.offset)
        span.tick()

    source.start(deliver)
    try:
        _wait(span, frames, "the frame source")
    finally:
        source.stop()
        source.close()
    return span


def decode_only(messages: Sequence[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> _Span:
    """The frame messages decoded from memory, as the frame source decodes them, no Kafka."""
    from worker.stream.frames import decode_frame_message

    max_pixels = Settings().images.max_pixels
    span = _Span()
    span.start()
    for key, value, headers in messages:
        decode_frame_message(key, value, headers, FramesConfig().max_message_bytes, max_pixels, None)
        span.tick()
    return span


def models_row(images: Sequence[np.ndarray], settings: Settings, threads: int, limit: int) -> dict[str, Any]:
    """The streaming pipeline on the frames (as a video, product defaults): frames/s and stage ms per frame."""
    import cv2

    from worker.bench.pipeline import run_facewatch

    settings = settings.model_copy(deep=True)
    settings.embedder.threads = threads
    with tempfile.TemporaryDirectory(prefix="facewatch-bench-kafka-") as folder:
        path = Path(folder) / "frames.mp4"
        height, width = images[0].shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (width, height))
        for image in images[:limit]:
            writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        writer.release()
        cpu_before = time.process_time()
        result = run_facewatch(path, {}, settings, limit)
        cpu = time.process_time() - cpu_before
    row = result.row()
    stages = row["stage_ms_per_frame"]
    return {
        "bench": "kafka",
        "impl": "models",
        "frames": row["frames"],
        "frames_per_s": row["fps"],
        "mb_per_s": None,
        # Stage times are wall times of the threads that run them; waiting for the batcher is no work.
        "cpu_ms_per_frame": round(sum(ms for stage, ms in stages.items() if not stage.startswith("wait")), 2),
        "cpu_share": None,
        "stage_ms_per_frame": stages,
        "cpu_ms_per_frame_with_loading": round(1000.0 * cpu / max(1, row["frames"]), 2),
        "threads": threads,
    }


def run_kafka_bench(
    bootstrap: str,
    video: Path,
    frames: int = 600,
    size: tuple[int, int] = (1280, 720),
    rounds: int = 3,
    models: int = 60,
    threads: int = 1,
    settings: Settings | None = None,
    report: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Rows for kafka-python, frame-source and jpeg-decode (median of ``rounds`` interleaved), then models."""
    if not video.is_file():
        raise FacewatchError(f"video {video} does not exist")
    if frames < 2 or rounds < 1:
        raise FacewatchError("--frames must be at least 2 and --rounds at least 1")
    images = scaled_frames(video, frames, size)
    messages = _messages(images)
    jpeg_bytes = sum(len(value) for _, value, _ in messages)
    topic = f"facewatch-bench-kafka-{uuid.uuid4().hex[:8]}"
    report(f"{frames} frames of {size[0]}x{size[1]}, {jpeg_bytes / frames / 1000:.0f} kB each on average, to {topic}")
    fill(bootstrap, topic, messages)
    measured: dict[str, list[dict[str, Any]]] = {"kafka-python": [], "frame-source": [], "jpeg-decode": []}
    for round_number in range(rounds):
        for impl, run in (
            ("kafka-python", lambda: consume_bare(bootstrap, topic, frames)),
            ("frame-source", lambda: consume_source(bootstrap, topic, frames)),
            ("jpeg-decode", lambda: decode_only(messages)),
        ):
            row = run().row(impl, frames, jpeg_bytes)
            measured[impl].append(row)
            report(
                f"  round {round_number + 1} {impl}: {row['frames_per_s']} frames/s, {row['cpu_ms_per_frame']} ms CPU"
            )
    rows = []
    for results in measured.values():
        ordered = sorted(results, key=lambda row: row["frames_per_s"])
        row = dict(ordered[len(ordered) // 2])
        row["rounds"] = [r["frames_per_s"] for r in results]
        row["cpu_ms_rounds"] = [r["cpu_ms_per_frame"] for r in results]
        row["cpu_ms_per_frame"] = statistics.median(r["cpu_ms_per_frame"] for r in results)
        row["size"] = f"{size[0]}x{size[1]}"
        rows.append(row)
    if models:
        report(f"  models: the pipeline on {min(models, frames)} of the frames, {threads} torch thread(s)")
        row = models_row(images, settings or Settings(), threads, min(models, frames))
        row["size"] = f"{size[0]}x{size[1]}"
        rows.append(row)
    return rows
