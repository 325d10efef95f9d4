"""Every Prometheus metric the worker exports, in one place.

Naming follows Prometheus conventions (``facewatch_`` prefix, base units, ``_total`` counters).
Labels are bounded: camera ids, stages, reasons, Kafka partitions. Never an identity, a track or
a face: those would grow without bound and would put biometric identifiers into monitoring.
deploy/grafana and deploy/prometheus use these names; a test checks they all exist.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

MAX_CAMERA_LABELS = 256  # distinct camera label values per worker; more cameras share the label "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DWELL_BUCKETS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)


class Metrics:
    """The worker's metrics on their own registry (tests and several workers in one process)."""

    def camera_label(self, camera_id: str) -> str:
        """The camera label for ``camera_id``, bounded: frame keys come from outside and must not grow the series.

        A valid camera id (1-128 letters, digits, '.', '_', '-') is its own label until
        MAX_CAMERA_LABELS cameras have one; later cameras are "other", malformed ids "invalid".
        """
        if not camera_id or len(camera_id) > 128 or not all(c.isalnum() or c in "._-" for c in camera_id):
            return "invalid"
        with self._cameras_lock:
            if camera_id in self._cameras:
                return camera_id
            if len(self._cameras) < MAX_CAMERA_LABELS:
                self._cameras.add(camera_id)
                return camera_id
        return "other"

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            # process_* (CPU, memory, open files) for the dashboard. Only on a registry made here: a
            # caller's registry may have it already, and registering it twice is an error.
            ProcessCollector(registry=registry)
        self.registry = registry
        self._cameras: set[str] = set()
        self._cameras_lock = threading.Lock()
        r = self.registry
        self.frames_received = Counter(
            "facewatch_frames_received", "Frames that reached the worker, per camera", ["camera"], registry=r
        )
        self.frames_decoded = Counter(
            "facewatch_frames_decoded",
            "Frames decoded and sent through the pipeline, per camera",
            ["camera"],
            registry=r,
        )
        self.frames_dropped = Counter(
            "facewatch_frames_dropped",
            "Frames not processed: behind (newest frame won), bad (dead-lettered); facewatch publish: "
            "broker_unavailable (too many waiting), not_delivered (not acknowledged)",
            ["camera", "reason"],
            registry=r,
        )
        self.frames_published = Counter(
            "facewatch_frames_published",
            "Frames facewatch publish delivered to the frames topic (acknowledged by the broker), per camera",
            ["camera"],
            registry=r,
        )
        self.decode_errors = Counter(
            "facewatch_decode_errors",
            "Frames that could not be decoded or validated, by reason",
            ["reason"],
            registry=r,
        )
        self.dead_letters = Counter(
            "facewatch_dead_letter_messages",
            "Messages sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.watchlist_records_rejected = Counter(
            "facewatch_watchlist_records_rejected",
            "Replication topic records skipped as malformed (the replica follows the rest)",
            registry=r,
        )
        self.faces_detected = Counter(
            "facewatch_faces_detected", "Faces found by the detector, per camera", ["camera"], registry=r
        )
        self.faces_embedded = Counter("facewatch_faces_embedded", "Faces embedded", registry=r)
        self.faces_rechecked = Counter(
            "facewatch_faces_rechecked",
            "Faces embedded again in fp32 because the lowered precision's decision was too close to call",
            registry=r,
        )
        self.embedding_batch_size = Histogram(
            "facewatch_embedding_batch_size", "Faces per embedding forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.stage_seconds = Histogram(
            "facewatch_stage_duration_seconds",
            "Time spent per frame (embed: per batch) in each pipeline stage",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frame_to_event_seconds = Histogram(
            "facewatch_frame_to_event_seconds",
            "From a frame entering the worker to the event it completed being published",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.scene_cuts = Counter(
            "facewatch_scene_cuts",
            "Scene cuts (shot changes) seen, per camera: every open track of the camera ended there",
            ["camera"],
            registry=r,
        )
        self.matches = Counter("facewatch_matches", "FaceMatch events published, per camera", ["camera"], registry=r)
        self.tracks_ended = Counter(
            "facewatch_tracks_ended",
            "Tracks closed, per camera and outcome (matched, uncertain, unknown)",
            ["camera", "outcome"],
            registry=r,
        )
        self.events_published = Counter(
            "facewatch_events_published", "Events delivered, per sink and type", ["sink", "type"], registry=r
        )
        self.publish_errors = Counter(
            "facewatch_event_publish_errors", "Events a sink failed to deliver", ["sink"], registry=r
        )
        self.cooldown_restores = Counter(
            "facewatch_cooldown_restores",
            "Read-backs of the events topic that seed the cooldowns of newly assigned partitions (restored, failed)",
            ["outcome"],
            registry=r,
        )
        self.cooldown_announcements = Counter(
            "facewatch_cooldown_announcements_restored", "FaceMatch events read back into the cooldowns", registry=r
        )
        self.cooldown_unreadable = Counter(
            "facewatch_cooldown_unreadable_records",
            "Records of the events topic that are no event (skipped while restoring cooldowns)",
            registry=r,
        )
        self.watchlist_svm_active = Gauge(
            "facewatch_watchlist_svm_active",
            "1 while watchlist.classifier svm decides with a trained SVM; 0 when it fell back to the nearest "
            "template (too few templates or identities) or the classifier is nearest",
            registry=r,
        )
        self.watchlist_identities = Gauge(
            "facewatch_watchlist_identities", "Identities in the loaded watchlist", registry=r
        )
        self.watchlist_templates = Gauge(
            "facewatch_watchlist_templates", "Face templates in the loaded watchlist", registry=r
        )
        self.watchlist_version = Gauge("facewatch_watchlist_version", "Version of the loaded watchlist", registry=r)
        self.watchlist_erasure_pending = Gauge(
            "facewatch_watchlist_erasure_pending",
            "1 while removed watchlist data may still be in the store's file or WAL (a reader blocked the checkpoint)",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "facewatch_kafka_consumer_lag",
            "Messages between the consumer's position and the partition's high-water mark",
            ["topic", "partition"],
            registry=r,
        )
        self.consumer_group_lag = Gauge(
            "facewatch_kafka_consumer_group_lag",
            "Messages between the consumer group's committed offset and the partition's end (what KEDA's Kafka "
            "scaler scales on), per partition assigned to this worker: summed over the workers, the group's lag",
            ["topic", "partition"],
            registry=r,
        )
        self.kafka_connected = Gauge(
            "facewatch_kafka_connected",
            "1 while the broker answers and the frames consumer has partitions assigned and fetching "
            "(facewatch publish: while the broker acknowledges frames)",
            registry=r,
        )
        self.kafka_offset_resets = Counter(
            "facewatch_kafka_offset_resets",
            "Frames partitions read again from the beginning because the broker lost their data",
            ["topic", "partition"],
            registry=r,
        )
        self.rtsp_reconnects = Counter(
            "facewatch_rtsp_reconnects", "Reconnection attempts to RTSP cameras", ["camera"], registry=r
        )
        self.camera_connected = Gauge(
            "facewatch_camera_connected", "1 while the camera's stream is open", ["camera"], registry=r
        )
        self.ready = Gauge(
            "facewatch_ready",
            "1 when models and watchlist are loaded and sources connected (facewatch publish: camera and broker)",
            registry=r,
        )
        self.device = Gauge(
            "facewatch_device_info",
            "Torch device and precision of the embedder's watchlist search (value 1; bf16+fp32-check: auto's bf16 "
            "with close calls embedded again in fp32)",
            ["device", "precision"],
            registry=r,
        )
        self.build = Info("facewatch_build", "facewatch, torch and model versions", registry=r)
        # Visitors (docs/visitors.md): per zone, never per visitor.
        self.visitors_new = Counter(
            "facewatch_visitors_new", "Anonymous visitors seen for the first time, per zone", ["zone"], registry=r
        )
        self.visits = Counter(
            "facewatch_visits",
            "Visits started, per zone; returning=true: the visitor came before",
            ["zone", "returning"],
            registry=r,
        )
        self.visit_dwell = Histogram(
            "facewatch_visit_dwell_seconds",
            "Dwell time of ended visits, per zone",
            ["zone"],
            buckets=DWELL_BUCKETS,
            registry=r,
        )
        self.visits_open = Gauge("facewatch_visits_open", "Visits in progress, per zone", ["zone"], registry=r)
        self.visitors_retained = Gauge(
            "facewatch_visitors_retained",
            "Visitors whose centroid is held (seen within visitors.retention_hours)",
            registry=r,
        )
        self.visitor_tracks = Counter(
            "facewatch_visitor_tracks",
            "Unknown tracks offered to visitor clustering, by outcome (assigned, few_faces, watchlist, opted_out, "
            "replayed, failed)",
            ["outcome"],
            registry=r,
        )
        self.visitors_deleted = Counter(
            "facewatch_visitors_deleted",
            "Visitors deleted with their embeddings, by reason (retention, forget)",
            ["reason"],
            registry=r,
        )
