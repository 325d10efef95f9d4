"""`facewatch bench scale`: real `facewatch run` replicas in one consumer group, 1 then 2 (then N), on a real broker.

Each step gets a fresh frames topic with ``partitions`` partitions, filled before any replica starts
with the frames of a real clip for several cameras, encoded as `facewatch publish` encodes them
(JPEG quality 90, the frame message format of worker/stream/frames.py, the publish producer's
settings). Camera ``i`` goes to partition ``i % partitions``, so every partition carries the same
number of frames (a key hash could put two cameras on one partition and leave another empty).

A step of R replicas starts R-1 replicas, waits until frames flow, then starts the last one: the
group rebalances while frames are being processed, as when an autoscaler adds a pod. Every
replica is a child process pinned to one core (``os.sched_setaffinity``) with one torch thread and
OMP_NUM_THREADS=1, at the product defaults otherwise (an empty watchlist: detection, tracking and
embedding run as usual; matching has nothing to find, so tracks end as unknown). The bench reads each
replica's /metrics every ``SAMPLE_S``:

- frames/s: frames handed to the pipeline (``facewatch_frames_decoded``, all replicas) per second,
  over the window in which every replica has partitions and frames to process (from when the last
  replica's first frame arrived plus ``settle_s``, to when the first replica ran out of frames);
- cores used and frames per CPU second: the replicas' own CPU time (``process_cpu_seconds_total``)
  over the same window. On a busy machine a replica gets less than its core; frames per CPU second
  says whether a replica does less per unit of CPU when others run (it should not);
- lag over time: the group's lag, ``facewatch_kafka_consumer_group_lag`` summed over the replicas;
- rebalance pause: the longest time in which no replica took a frame, between the last replica's
  start and its first frame (resolution ``SAMPLE_S``);
- duplicates: events whose event_id appeared before (from the replicas' stdout), once all frames
  are done and the replicas stopped with SIGTERM (which drains and commits). Event ids are derived
  from camera, track and identity, so a frame range decided twice (replayed after a rebalance) shows
  up here.

The bench process itself and the broker are not pinned: on a machine with as many cores as
replicas they share the cores with the replicas (see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from worker.config import KafkaConfig
from worker.errors import FacewatchError

log = logging.getLogger(__name__)

SAMPLE_S = 0.25
READY_TIMEOUT_S = 300.0  # model loading on a busy single core
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}  # group joins in ~3 s instead of ~5 s


@dataclass
class Sample:
    """What every replica's /metrics said at one moment (seconds since the step began)."""

    t: float
    decoded: list[float]  # per replica: frames handed to its pipeline
    position_lag: list[float | None]  # per replica: its position lag summed over its partitions (None: no series)
    group_lag: float | None  # the group's committed-offset lag, summed over the replicas (None: none exports it yet)
    cpu: list[float] = field(default_factory=list)  # per replica: CPU seconds used so far (process_cpu_seconds_total)


@dataclass
class StepResult:
    """One step: R replicas on a topic of ``frames`` frames."""

    replicas: int
    partitions: int
    cameras: int
    frames: int
    frames_per_s: float
    window_s: float
    cores_used: float
    frames_per_cpu_s: float
    rebalance_pause_s: float | None
    events: int
    duplicates: int
    drained_s: float
    lag_over_time: list[tuple[float, int | None]] = field(default_factory=list)
    per_replica_frames: list[int] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "bench": "scale",
            "replicas": self.replicas,
            "partitions": self.partitions,
            "cameras": self.cameras,
            "frames": self.frames,
            "frames_per_s": round(self.frames_per_s, 2),
            "window_s": round(self.window_s, 1),
            "cores_used": round(self.cores_used, 2),
            "frames_per_cpu_s": round(self.frames_per_cpu_s, 2),
            "rebalance_pause_s": None if self.rebalance_pause_s is None else round(self.rebalance_pause_s, 2),
            "events": self.events,
            "duplicates": self.duplicates,
            "drained_s": round(self.drained_s, 1),
            "per_replica_frames": self.per_replica_frames,
            "lag_over_time": [[round(t, 1), lag] for t, lag in self.lag_over_time],
        }


def clip_frames(video: Path, limit: int) -> list[tuple[bytes, int, int]]:
    """(JPEG bytes as `facewatch publish` encodes them, width, height) of the clip's first ``limit`` frames."""
    from worker.bench.pipeline import video_frames
    from worker.vision.image import encode_jpeg

    frames = [(encode_jpeg(image, 90), image.shape[1], image.shape[0]) for _, _, image in video_frames(video, limit)]
    if not frames:
        raise FacewatchError(f"no frames in {video}")
    return frames


def fill_topic(
    bootstrap: str, topic: str, partitions: int, cameras: int, frames: Sequence[tuple[bytes, int, int]], fps: float
) -> int:
    """Create ``topic`` and write every frame for each camera (camera i on partition i % partitions)."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from worker.kafka_clients import producer_settings

    kafka = KafkaConfig(bootstrap_servers=bootstrap)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        admin.create_topics([NewTopic(f"{topic}.dead-letter", num_partitions=1, replication_factor=1)])
        deadline = time.monotonic() + 30
        while True:
            described = admin.describe_topics([topic])
            if described and len(described[0].get("partitions", [])) == partitions:
                break
            if time.monotonic() > deadline:
                raise FacewatchError(f"topic {topic} did not show {partitions} partitions")
            time.sleep(0.1)
    finally:
        admin.close()
    producer = KafkaProducer(**producer_settings(kafka))
    start = time.time() - len(frames) / fps  # the frames were captured just now, at the clip's rate
    sent = 0
    for seq, (jpeg, width, height) in enumerate(frames):
        for camera in range(cameras):
            headers = {
                "camera_id": f"cam-{camera}",
                "capture_ts_ms": str(round((start + seq / fps) * 1000)),
                "seq": str(seq),
                "content_type": "image/jpeg",
                "width": str(width),
                "height": str(height),
            }
            producer.send(
                topic,
                key=headers["camera_id"].encode(),
                value=jpeg,
                headers=[(k, v.encode()) for k, v in headers.items()],
                partition=camera % partitions,
            )
            sent += 1
    producer.flush(120)
    producer.close()
    return sent


class Replica:
    """One `facewatch run` child process pinned to one core; its stdout is the event log."""

    def __init__(self, folder: Path, index: int, core: int, config: dict[str, Any]) -> None:
        self.index = index
        self.core = core
        self.port = _free_port()
        self.config_path = folder / f"replica-{index}.yaml"
        self.config_path.write_text(yaml.safe_dump({**config, "http": {"host": "127.0.0.1", "port": self.port}}))
        self.events_path = folder / f"replica-{index}.events.jsonl"
        self.log_path = folder / f"replica-{index}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process on its core, one thread for torch and OpenMP."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACEWATCH_")}
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "worker", "--log-level", "INFO", "--config", str(self.config_path), "run"]
        core = self.core
        with open(self.events_path, "ab") as out, open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
                preexec_fn=lambda: os.sched_setaffinity(0, {core}),
            )

    def check(self) -> None:
        """Fail with the end of its log if the process exited."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise FacewatchError(f"replica {self.index} exited with {self.proc.returncode}:\n{tail}")

    def metrics(self) -> dict[str, float]:
        """Sample name -> value summed over labels, plus ``name{partition}`` entries for the lag gauges."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return {}
        values: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            name = series.split("{", 1)[0]
            values[name] = values.get(name, 0.0) + float(value)
        return values

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 120.0) -> None:
        """SIGTERM (drain, commit, exit); SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def event_ids(self) -> list[str]:
        """The event ids this replica printed (a line cut short is skipped)."""
        ids = []
        for line in self.events_path.read_text(errors="replace").splitlines():
            try:
                ids.append(json.loads(line)["event_id"])
            except (ValueError, KeyError, TypeError):
                continue
        return ids


def _sum_known(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) if known else None


def _free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def replica_config(bootstrap: str, topic: str, group: str, store: Path) -> dict[str, Any]:
    """A `facewatch run` config at the product defaults: this topic and group, events on stdout, one torch thread."""
    return {
        "kafka": {"bootstrap_servers": bootstrap},
        "frames": {
            "enabled": True,
            "topic": topic,
            "dead_letter_topic": f"{topic}.dead-letter",
            "group_id": group,
            **FAST_GROUP,
        },
        "events": {"stdout": True},
        "watchlist": {"store": str(store)},
        "embedder": {"threads": 1},
    }


def throughput(samples: Sequence[Sample], replicas: int, settle_s: float) -> tuple[float, float]:
    """(frames/s, window s) over the time every replica had frames to process (see the module docstring)."""
    start, end = window(samples, replicas, settle_s)
    seconds = samples[end].t - samples[start].t if samples else 0.0
    if seconds <= 0:
        return 0.0, 0.0
    return (sum(samples[end].decoded) - sum(samples[start].decoded)) / seconds, seconds


def cpu_in_window(samples: Sequence[Sample], replicas: int, settle_s: float) -> tuple[float, float]:
    """(cores the replicas used together, frames per CPU second) over the throughput window."""
    start, end = window(samples, replicas, settle_s)
    if not samples or end <= start or not samples[end].cpu or not samples[start].cpu:
        return 0.0, 0.0
    cpu = sum(samples[end].cpu) - sum(samples[start].cpu)
    frames = sum(samples[end].decoded) - sum(samples[start].decoded)
    seconds = samples[end].t - samples[start].t
    return cpu / seconds, (frames / cpu if cpu > 0 else 0.0)


def window(samples: Sequence[Sample], replicas: int, settle_s: float) -> tuple[int, int]:
    """Indexes of the samples that open and close the throughput window (equal when there is none)."""
    totals = [sum(s.decoded) for s in samples]
    if not totals or totals[-1] == 0:
        return 0, 0
    all_in = next((i for i, s in enumerate(samples) if sum(1 for d in s.decoded if d > 0) == replicas), None)
    start = end = 0
    if all_in is not None:
        start = next((i for i in range(all_in, len(samples)) if samples[i].t >= samples[all_in].t + settle_s), all_in)
        end = len(samples) - 1
        for i in range(start + 1, len(samples)):
            # The first replica whose partitions are read to their end: the window ends.
            if any(lag == 0 for lag in samples[i].position_lag):
                end = i
                break
    if end <= start or samples[end].t - samples[start].t < 1.0:
        # A run too small for the window (or the last replica came after the frames were gone): first frame to last.
        first = next(i for i, total in enumerate(totals) if total > 0)
        last = next(i for i in range(len(totals)) if totals[i] == totals[-1])
        start, end = max(0, first - 1), last
    return start, end


def rebalance_pause(samples: Sequence[Sample], joined_at: float) -> float | None:
    """The longest time between samples that showed a new frame anywhere, from ``joined_at`` to the last replica's
    first frame (an upper bound on the stall, by at most ``SAMPLE_S``).

    None when the last replica took no frame (the others had taken them all before it joined: a tiny run).
    """
    first = next((i for i, s in enumerate(samples) if s.t >= joined_at), None)
    last = next((i for i in range(first or 0, len(samples)) if samples[i].decoded[-1] > 0), None)
    if first is None or last is None:
        return None
    longest, since = 0.0, samples[first].t
    for i in range(first + 1, last + 1):
        if sum(samples[i].decoded) > sum(samples[i - 1].decoded):
            longest = max(longest, samples[i].t - since)  # at most SAMPLE_S more than the true stall
            since = samples[i].t
    return max(longest, samples[last].t - since)


def run_step(
    bootstrap: str,
    frames: Sequence[tuple[bytes, int, int]],
    replicas: int,
    partitions: int,
    cameras: int,
    folder: Path,
    store: Path,
    settle_s: float = 5.0,
    timeout_s: float = 1800.0,
    fps: float = 30.0,
    report: Callable[[str], None] = lambda _: None,
) -> StepResult:
    """One step of the bench: fill a fresh topic, start the replicas (the last one joining late), drain."""
    run = uuid.uuid4().hex[:8]
    topic, group = f"facewatch-scale-{run}-r{replicas}", f"facewatch-scale-{run}"
    total = fill_topic(bootstrap, topic, partitions, cameras, frames, fps)
    report(f"{replicas} replica(s): {total} frames on {topic} ({partitions} partitions, {cameras} cameras)")
    cores = sorted(os.sched_getaffinity(0))
    config = replica_config(bootstrap, topic, group, store)
    step_folder = folder / f"r{replicas}"
    step_folder.mkdir()
    team = [Replica(step_folder, i, cores[i % len(cores)], config) for i in range(replicas)]
    samples: list[Sample] = []
    began = time.monotonic()
    joined_at = 0.0

    def sample() -> Sample:
        values = [replica.metrics() for replica in team]
        s = Sample(
            time.monotonic() - began,
            [v.get("facewatch_frames_decoded_total", 0.0) for v in values],
            [v.get("facewatch_kafka_consumer_lag") for v in values],
            _sum_known([v.get("facewatch_kafka_consumer_group_lag") for v in values]),
            [v.get("process_cpu_seconds_total", 0.0) for v in values],
        )
        samples.append(s)
        return s

    def wait(condition: Callable[[Sample], bool], what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for replica in team:
                replica.check()
            if condition(sample()):
                return
            if time.monotonic() > deadline:
                raise FacewatchError(f"scale bench: timed out waiting for {what}")
            time.sleep(SAMPLE_S)

    try:
        for replica in team[:-1]:
            replica.start()
        if replicas > 1:
            wait(lambda s: all(d > 0 for d in s.decoded[:-1]), "the first replicas' frames")
        joined_at = time.monotonic() - began
        team[-1].start()
        wait(lambda s: sum(s.decoded) >= total and s.group_lag == 0 and team[-1].ready(), "every frame committed")
        drained = samples[-1].t - joined_at
    finally:
        for replica in team:
            replica.stop()
    frames_per_s, seconds = throughput(samples, replicas, settle_s)
    cores, frames_per_cpu_s = cpu_in_window(samples, replicas, settle_s)
    ids = [event_id for replica in team for event_id in replica.event_ids()]
    counts = Counter(ids)
    lag_points, next_t = [], 0.0
    for s in samples:
        if s.t >= next_t:
            lag_points.append((s.t, None if s.group_lag is None else int(s.group_lag)))
            next_t = s.t + 5.0
    return StepResult(
        replicas=replicas,
        partitions=partitions,
        cameras=cameras,
        frames=total,
        frames_per_s=frames_per_s,
        window_s=seconds,
        cores_used=cores,
        frames_per_cpu_s=frames_per_cpu_s,
        rebalance_pause_s=rebalance_pause(samples, joined_at) if replicas > 1 else None,
        events=len(ids),
        duplicates=sum(n - 1 for n in counts.values()),
        drained_s=drained,
        lag_over_time=lag_points,
        per_replica_frames=[int(d) for d in samples[-1].decoded],
    )


def run_scale_bench(
    bootstrap: str,
    video: Path,
    replica_counts: Sequence[int],
    partitions: int | None = None,
    cameras: int | None = None,
    frames_per_camera: int | None = None,
    settle_s: float = 5.0,
    rounds: int = 1,
    report: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """One row per replica count (rounds interleaved; the median round's frames/s), with ``ratio`` against the first."""
    from worker.watchlist.store import WatchlistStore

    if not video.is_file():
        raise FacewatchError(f"video {video} does not exist")
    if not replica_counts or min(replica_counts) < 1:
        raise FacewatchError("--replicas: at least one count, each at least 1")
    partitions = partitions or max(replica_counts)
    cameras = cameras or 2 * partitions
    if partitions < max(replica_counts):
        raise FacewatchError(f"{partitions} partitions leave replicas idle: give at least {max(replica_counts)}")
    frames = clip_frames(video, frames_per_camera or 10**9)
    by_count: dict[int, list[StepResult]] = {count: [] for count in replica_counts}
    with tempfile.TemporaryDirectory(prefix="facewatch-scale-") as tmp:
        folder = Path(tmp)
        store = folder / "watchlist.db"
        WatchlistStore(store).close()  # an empty watchlist: the models run, nothing matches
        for round_number in range(rounds):
            round_folder = folder / f"round-{round_number}"
            round_folder.mkdir()
            for count in replica_counts:
                step = run_step(
                    bootstrap, frames, count, partitions, cameras, round_folder, store, settle_s, report=report
                )
                report(f"  {count} replica(s): {step.frames_per_s:.2f} frames/s, {step.duplicates} duplicates")
                by_count[count].append(step)
    rows = []
    reference = None
    for count in replica_counts:
        steps = sorted(by_count[count], key=lambda s: s.frames_per_s)
        median = steps[len(steps) // 2]
        row = median.row()
        row["rounds"] = [round(s.frames_per_s, 2) for s in by_count[count]]
        row["duplicates"] = sum(s.duplicates for s in by_count[count])
        if reference is None:
            reference = statistics.median(s.frames_per_s for s in by_count[count])
        row["ratio"] = round(median.frames_per_s / reference, 2) if reference else None
        rows.append(row)
    return rows
