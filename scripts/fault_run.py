"""Fault run: the Hamilton clip through Kafka while the worker is killed, the broker restarted and a camera dropped.

    python scripts/fault_run.py                 # 3 passes of the clip, the full schedule
    python scripts/fault_run.py --passes 1      # the short run CI does (tests/stream/test_fault_run.py)

It starts its own components (a Tansu broker, a GStreamer RTSP server, the worker as a real
`facewatch run` process: the test fixtures' classes in tests/infra), so it needs the test
install (`bash scripts/install.sh --test`) and ../shared.

Each pass publishes the clip (and a few poison messages) to the frames topic as a new camera,
SIGKILLs the worker once it has consumed part of the pass and starts it again, drops the RTSP
camera (the worker's second source) for a few seconds, waits until the group's committed offset
reaches what the broker acknowledged, reads the events and dead letters back, and then restarts
the broker. Tansu keeps topics in memory, so a broker restart starts empty: the run drains
before it, and counts what was acknowledged but not committed as unaccounted.

The table: frames in (acknowledged by the broker), frames processed (committed, less dead
letters), dead-lettered (distinct source offsets), events out (distinct event ids on the events
topic), duplicates (records repeating an event id, or dead letters repeating a source offset: the
replay after a kill re-sends what was not committed), and
frames unaccounted (in, less committed). The target is 0 unaccounted. Then what the probes said:
whether /readyz failed while the broker and the camera were down and recovered after.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STILLS = {
    "Lin-Manuel Miranda": "lin-manuel-miranda.png",
    "Alex Lacamoire": "alex-lacamoire.png",
    "Barack Obama": "obama.jpg",
    "Joe Biden": "biden.jpg",
}
POISON_EVERY = 50  # one malformed message after every this many frames
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


@dataclass
class FaultReport:
    """What one fault run counted; ``unaccounted`` is the figure that must be 0."""

    passes: int = 0
    frames_in: int = 0
    poison_in: int = 0
    committed: int = 0
    dead_lettered: int = 0
    events_out: int = 0
    duplicates: int = 0
    worker_kills: int = 0
    broker_restarts: int = 0
    camera_drops: int = 0
    not_ready_while_broker_down: int = 0
    not_ready_while_camera_down: int = 0
    ready_again_after_broker: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        """Frames the worker processed: committed offsets less the dead-lettered ones."""
        return self.committed - self.dead_lettered

    @property
    def unaccounted(self) -> int:
        """Messages the broker acknowledged that were neither processed nor dead-lettered."""
        return self.frames_in + self.poison_in - self.committed

    def table(self) -> str:
        """The run as a two-column table."""
        rows = [
            ("passes of the clip", self.passes),
            ("frames in (acknowledged)", self.frames_in),
            ("poison messages in", self.poison_in),
            ("frames processed", self.processed),
            ("dead-lettered", self.dead_lettered),
            ("events out (distinct ids)", self.events_out),
            ("  of which face_match", self.events_by_type.get("face_match", 0)),
            ("duplicates (event id, source offset)", self.duplicates),
            ("frames unaccounted", self.unaccounted),
            ("worker SIGKILLs", self.worker_kills),
            ("broker restarts", self.broker_restarts),
            ("camera drops", self.camera_drops),
            ("broker down: /readyz failed", f"{self.not_ready_while_broker_down}/{self.broker_restarts}"),
            ("broker back: ready within 60 s", f"{self.ready_again_after_broker}/{self.broker_restarts}"),
            ("camera down: /readyz failed", f"{self.not_ready_while_camera_down}/{self.camera_drops}"),
            ("wall time (s)", round(self.seconds, 1)),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _enroll(shared: Path, store_path: Path) -> None:
    from worker.config import Settings
    from worker.recognition import FaceRecognizer
    from worker.watchlist.enroll import Enroller, EnrollRules
    from worker.watchlist.store import WatchlistStore

    recognizer = FaceRecognizer(Settings())
    with WatchlistStore(store_path) as store:
        enroller = Enroller(recognizer, store, EnrollRules(largest=True))
        for name, still in STILLS.items():
            report = enroller.enroll(name, [shared / "data" / "stills" / still])
            if not report.accepted:
                raise RuntimeError(f"{still} was not enrolled: {report.as_dict()}")


def _clip_frames(clip: Path) -> list[Any]:
    import cv2

    capture = cv2.VideoCapture(str(clip))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    if not frames:
        raise RuntimeError(f"no frames in {clip}")
    return frames


def _poison(camera: str, n: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Malformed messages of a few kinds, in turn: bad JPEG, missing headers, a negative seq."""
    kind = n % 3
    if kind == 0:
        headers = {"camera_id": camera, "capture_ts_ms": str(int(time.time() * 1000)), "seq": str(10**6 + n)}
        headers |= {"content_type": "image/jpeg", "width": "640", "height": "360"}
        return camera.encode(), b"\xff\xd8 not a jpeg", [(k, v.encode()) for k, v in headers.items()]
    if kind == 1:
        return camera.encode(), b"\xff\xd8\xff", []
    headers = {"camera_id": camera, "capture_ts_ms": "1", "seq": "-4", "content_type": "image/jpeg"}
    return camera.encode(), b"\xff\xd8\xff", [(k, v.encode()) for k, v in headers.items()]


def _produce(bootstrap: str, topic: str, camera: str, frames: list[Any], fps: float = 25.0) -> tuple[int, int]:
    """Publish one pass (frames interleaved with poison); (frames acknowledged, poison acknowledged)."""
    from kafka import KafkaProducer

    from worker.stream.frames import encode_frame_message

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=5, linger_ms=5)
    start = time.time()
    futures = []
    try:
        for seq, image in enumerate(frames):
            key, value, headers = encode_frame_message(camera, seq, start + seq / fps, image, quality=85)
            futures.append(("frame", producer.send(topic, key=key, value=value, headers=headers)))
            if seq % POISON_EVERY == POISON_EVERY - 1:
                key, value, headers = _poison(camera, seq // POISON_EVERY)
                futures.append(("poison", producer.send(topic, key=key, value=value, headers=headers)))
        producer.flush(60)
    finally:
        producer.close(10)
    acked = {"frame": 0, "poison": 0}
    for kind, future in futures:
        if future.succeeded():
            acked[kind] += 1
    return acked["frame"], acked["poison"]


def _committed(bootstrap: str, group: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, 0)) or 0
    finally:
        consumer.close()


def _read_all(bootstrap: str, topic: str) -> list[Any]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        consumer_timeout_ms=3000, group_id=None,
    )  # fmt: skip
    try:
        return list(consumer)
    finally:
        consumer.close()


def _wait(condition: Any, timeout: float, what: str, interval: float = 0.5, explain: Any = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except OSError:
            pass
        time.sleep(interval)
    print(f"  gave up waiting for {what} after {timeout:.0f} s", file=sys.stderr)
    if explain is not None:
        try:
            print(f"  {explain()}", file=sys.stderr)
        except OSError as exc:
            print(f"  (could not say why: {exc})", file=sys.stderr)
    return False


def fault_run(shared: Path, workdir: Path, passes: int = 3, drain_timeout_s: float = 300.0) -> FaultReport:
    """Run the schedule (see the module docstring) ``passes`` times; the counts."""
    from tests.infra.kafka_broker import KafkaBroker
    from tests.infra.rtsp_server import RtspServer
    from tests.infra.worker_process import WorkerProcess

    report = FaultReport(passes=passes)
    t0 = time.monotonic()
    clip = shared / "data" / "video" / "short_hamilton_clip.mp4"
    frames = _clip_frames(clip)
    store = workdir / "watchlist.db"
    _enroll(shared, store)
    run = uuid.uuid4().hex[:8]
    topics = {"frames": f"frames-{run}", "events": f"events-{run}", "dead": f"dead-{run}"}
    group = f"workers-{run}"
    seen_ids: set[str] = set()

    with KafkaBroker() as broker, RtspServer(clip, mount="/door", loop=True) as camera:
        config = {
            "watchlist": {"store": str(store)},
            "events": {"stdout": False, "kafka_topic": topics["events"]},
            "kafka": {"bootstrap_servers": broker.bootstrap, "retry_backoff_max_s": 2.0},
            "frames": {
                "enabled": True, "topic": topics["frames"], "group_id": group,
                "dead_letter_topic": topics["dead"], "commit_interval_s": 0.5, **FAST_GROUP,
            },
            "cameras": [{"id": "door", "url": camera.url}],
            "rtsp": {"max_backoff_s": 2.0},
        }  # fmt: skip
        worker = WorkerProcess(workdir, config)
        try:
            for index in range(passes):
                for topic in topics.values():
                    broker.create_topic(topic)
                if index == 0:
                    worker.start().wait_ready(timeout=180)
                else:
                    back = time.monotonic()
                    if _wait(
                        lambda: worker.http("/readyz")[0] == 200, 60, "ready after the broker restart",
                        explain=lambda: f"/readyz said {worker.http('/readyz')[1]}",
                    ):  # fmt: skip
                        report.ready_again_after_broker += 1
                        print(f"pass {index + 1}: ready {time.monotonic() - back:.1f} s after the broker came back")
                received_before = worker.metric("facewatch_frames_received")
                frames_in, poison_in = _produce(broker.bootstrap, topics["frames"], f"lobby-{index}", frames)
                report.frames_in += frames_in
                report.poison_in += poison_in
                print(f"pass {index + 1}: {frames_in} frames and {poison_in} poison messages acknowledged")

                # A crash part-way through the pass.
                _wait(
                    lambda start=received_before: worker.metric("facewatch_frames_received") - start >= len(frames) / 3,
                    drain_timeout_s, "a third of the pass consumed", 0.2,
                )  # fmt: skip
                worker.kill()
                report.worker_kills += 1
                worker.start().wait_ready(timeout=180)

                # The second source, an RTSP camera, drops for a few seconds.
                camera.kill()
                report.camera_drops += 1
                if _wait(lambda: worker.http("/readyz")[0] == 503, 30, "/readyz to fail while the camera is down"):
                    report.not_ready_while_camera_down += 1
                camera.start()

                # Drain: everything acknowledged in this pass committed, then read what came out.
                expected = frames_in + poison_in
                _wait(
                    lambda goal=expected: _committed(broker.bootstrap, group, topics["frames"]) >= goal,
                    drain_timeout_s, f"the group's commit to reach {expected}", 1.0,
                )  # fmt: skip
                report.committed += _committed(broker.bootstrap, group, topics["frames"])
                sources = [dict(r.headers).get("facewatch_source") for r in _read_all(broker.bootstrap, topics["dead"])]
                report.dead_lettered += len(set(sources))
                report.duplicates += len(sources) - len(set(sources))  # a replayed poison message is sent again
                for record in _read_all(broker.bootstrap, topics["events"]):
                    event = json.loads(record.value)
                    if event["event_id"] in seen_ids:
                        report.duplicates += 1
                        continue
                    seen_ids.add(event["event_id"])
                    report.events_by_type[event["type"]] = report.events_by_type.get(event["type"], 0) + 1
                print(f"pass {index + 1}: drained, {len(seen_ids)} distinct events so far")

                if index + 1 < passes:  # a broker restart between passes (memory storage: it comes back empty)
                    broker.kill()
                    report.broker_restarts += 1
                    if _wait(lambda: worker.http("/readyz")[0] == 503, 60, "/readyz to fail while the broker is down"):
                        report.not_ready_while_broker_down += 1
                    time.sleep(5)
                    broker.start()
            worker.terminate()
        finally:
            worker.close()
    report.events_out = len(seen_ids)
    report.seconds = time.monotonic() - t0
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3, help="passes of the clip (a broker restart between two)")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the shared data folder")
    parser.add_argument("--keep", type=Path, help="keep the worker's config, log and store in this folder")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = fault_run(args.shared, args.keep, args.passes)
    else:
        with tempfile.TemporaryDirectory() as folder:
            report = fault_run(args.shared, Path(folder), args.passes)
    print(report.table())
    return 0 if report.unaccounted == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
