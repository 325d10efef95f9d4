"""The re-alert cooldown across a restart or a rebalance: read back from the worker's own events topic.

A worker that starts on a partition (after a crash, a deploy, or a rebalance that moved cameras
to it) resumes at the committed offset with empty decision state. Without the announcements made
before that offset, it would announce again an identity that the uninterrupted run held back by
``decisions.cooldown_s``. Those announcements are in the events topic: every event of a frame
before a committed offset was delivered before the commit (worker/stream/commits.py). So before
the first frame of newly assigned partitions, the Kafka source calls ``CooldownRestore`` with
that frame's time; it reads the events topic's FaceMatch events from ``cooldown_s`` plus
``decisions.restore_margin_s`` before then (``offsets_for_times`` on the records' wall-clock
timestamps, which are never earlier than the frame times they announce, give or take clock
skew, which the margin covers) up to the end, and hands them to the lanes
(``Pipeline.remember``), which seed each camera's cooldown before its next frames. Cameras read
directly (RTSP, files) are not replayed, but a restart would forget their cooldowns all the same:
the worker reads the topic back once before they start, from the cooldown before now.

Nothing local is kept: the state moves with the partitions, whichever replica gets them. The
events topic must be written by this worker group only (another group's events would count too).
When the read fails, the worker goes on without them and says so (a repeated alert is better
than no alerts).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from worker.config import KafkaConfig
from worker.kafka_clients import common_settings
from worker.obs.metrics import Metrics
from worker.stream.decisions import Announcement
from worker.stream.events import FaceMatch, parse_event

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 30.0  # most time one read-back may hold the frames source before it gives up


class RestoreFailed(Exception):
    """The events topic could not be read back."""


def read_announcements(
    kafka: KafkaConfig, topic: str, since: float, timeout_s: float = READ_TIMEOUT_S
) -> tuple[list[Announcement], int]:
    """FaceMatch events of ``topic`` whose frame time is at or after ``since`` (Unix seconds), and the count of
    records that are no event (skipped). Reads from the records stamped ``since`` on to the end as it was when
    called; raises RestoreFailed when the broker does not answer within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    timeout_ms = max(1000, int(timeout_s * 1000))
    try:
        consumer = KafkaConsumer(
            **common_settings(kafka),
            group_id=None,
            enable_auto_commit=False,
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=min(timeout_ms, 30_000),
        )
    except (KafkaError, OSError) as exc:
        raise RestoreFailed(f"cannot connect: {_describe(exc)}") from None
    try:
        return _read(consumer, topic, since, deadline)
    except KafkaError as exc:
        raise RestoreFailed(_describe(exc)) from None
    finally:
        consumer.close()


def _read(consumer: KafkaConsumer, topic: str, since: float, deadline: float) -> tuple[list[Announcement], int]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        return [], 0  # no events published yet
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    ends = consumer.end_offsets(tps, timeout_ms=_left_ms(deadline))
    starts = consumer.offsets_for_times({tp: max(0, int(since * 1000)) for tp in tps}, timeout_ms=_left_ms(deadline))
    remaining = {}
    for tp in tps:
        start = starts.get(tp)
        if start is None or start.offset >= ends[tp]:
            continue  # nothing stamped since then
        consumer.seek(tp, start.offset)
        remaining[tp] = ends[tp]
    found: list[Announcement] = []
    skipped = 0
    while remaining:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RestoreFailed(f"timed out with {len(remaining)} partition(s) of {topic} still to read")
        for records in consumer.poll(timeout_ms=int(min(left, 1.0) * 1000)).values():
            for record in records:
                try:
                    event = parse_event(record.value or b"")
                except ValidationError:
                    old = _v1_announcement(record.value or b"", since)
                    if old is not None:
                        found.append(old)
                    else:
                        skipped += 1
                    continue
                if isinstance(event, FaceMatch) and event.frame_timestamp.timestamp() >= since:
                    found.append(
                        Announcement(
                            event.camera_id, event.identity_id, event.frame_timestamp.timestamp(), event.event_id
                        )
                    )
        for tp in list(remaining):
            position = consumer.position(tp, timeout_ms=_left_ms(deadline))
            if position is not None and position >= remaining[tp]:
                del remaining[tp]
    return found, skipped


def _v1_announcement(data: bytes, since: float) -> Announcement | None:
    """A schema-version-1 face_match (published before an upgrade to version 2) as an announcement, else None.

    Version 2 only added fields, so the fields a cooldown needs mean what they meant.
    """
    try:
        event = json.loads(data)
        if event.get("schema_version") != 1 or event.get("type") != "face_match":
            return None
        at = datetime.fromisoformat(event["frame_timestamp"]).timestamp()
        found = Announcement(str(event["camera_id"]), str(event["identity_id"]), at, str(event["event_id"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return found if at >= since else None


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}"


def _left_ms(deadline: float) -> int:
    return max(1, int((deadline - time.monotonic()) * 1000))


class CooldownRestore:
    """Called by the Kafka source before the first frames of newly assigned partitions (on its thread), and by the
    worker before cameras it reads directly start."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        cooldown_s: float,
        margin_s: float,
        remember: Callable[[Sequence[Announcement]], None],
        metrics: Metrics,
        timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.cooldown_s = cooldown_s
        self.margin_s = margin_s
        self.remember = remember
        self.metrics = metrics
        self.timeout_s = timeout_s

    def __call__(self, first_frame_time: float) -> None:
        """Seed the cooldowns with what was announced within cooldown_s (plus the margin) before this frame time."""
        since = first_frame_time - self.cooldown_s - self.margin_s
        started = time.monotonic()
        try:
            found, skipped = read_announcements(self.kafka, self.topic, since, self.timeout_s)
        except RestoreFailed as exc:
            self.metrics.cooldown_restores.labels("failed").inc()
            log.warning(
                "cooldowns not restored from %s: %s; an identity announced shortly before may be announced again",
                self.topic,
                exc,
            )
            return
        if skipped:
            self.metrics.cooldown_unreadable.inc(skipped)
            log.warning("cooldowns: %d record(s) of %s are no facewatch event; skipped", skipped, self.topic)
        self.remember(found)
        self.metrics.cooldown_restores.labels("restored").inc()
        self.metrics.cooldown_announcements.inc(len(found))
        log.info(
            "cooldowns: %d announcement(s) since %.0f read back from %s in %.1f s",
            len(found),
            since,
            self.topic,
            time.monotonic() - started,
        )
