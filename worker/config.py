"""facewatch's one typed configuration.

Sources, highest priority first: command-line flags, environment variables
(``FACEWATCH_<SECTION>__<KEY>``, e.g. ``FACEWATCH_DETECTOR__NAME=mmod``), a YAML file
(``--config FILE`` or ``$FACEWATCH_CONFIG``), then the defaults below. Unknown keys are errors
in every source. docs/configuration.md lists every key; ``facewatch config docs`` regenerates it.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from worker.calibration import shipped_table
from worker.errors import ConfigError
from worker.secrets import register_secret

ENV_PREFIX = "FACEWATCH_"
# Measured with `facewatch eval quality` (docs/accuracy.md, "Face quality and decisions").
MIN_QUALITY_DEFAULT = 0.1
MIN_FACE_SIZE_DEFAULT = 24
# Chosen with `facewatch eval cluster` on the LFW pairsDevTrain people (docs/accuracy.md).
VISITOR_THRESHOLD_DEFAULT = 0.48
# The pixel budget: a 6000x4000 photo (24 MP camera) fits; `facewatch detect` peaked at 1.6 GB RSS on
# one (0.33 GB + about 48 bytes a pixel; 3.4 GB at 7900x7900), under the Helm chart's 2 GiB request.
MAX_PIXELS_DEFAULT = 24_000_000
CONFIG_FILE_ENV = "FACEWATCH_CONFIG"
# Variables with the prefix that are not config keys but are read elsewhere, on purpose.
_OTHER_ENV = {"FACEWATCH_CONFIG", "FACEWATCH_MODEL_DIR"}


class Section(BaseModel):
    """A config section: strict about unknown keys and about types."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(Section):
    dir: Path | None = Field(
        None,
        description="Folder holding dlib's model files. Default: the installed face_recognition_models "
        "package. FACEWATCH_MODEL_DIR is accepted as a shorthand.",
    )


class DetectorConfig(Section):
    name: Literal["hog", "mmod", "haar", "retinaface"] = Field(
        "retinaface",
        description="Face detector: retinaface (default: RetinaFace MobileNet-0.25 in torch; faces from 16 px, "
        "5 landmarks per face, batched, GPU-capable; the most accurate and, on CPU, the fastest: docs/accuracy.md), "
        "hog (dlib HOG+SVM, CPU), mmod (dlib's CNN in torch, batched, GPU-capable), haar (OpenCV Viola-Jones).",
    )
    upsample: int = Field(
        1, ge=0, le=3, description="hog and mmod: double the image this many times first (finds smaller faces)."
    )
    min_score: float = Field(0.0, description="hog and mmod: drop detections scoring at or below this.")
    device: str = Field("auto", description="mmod and retinaface: torch device (auto, cpu, cuda, cuda:N).")
    haar_cascade: Path | None = Field(None, description="haar: cascade XML file. Default: OpenCV's frontal face.")
    haar_min_neighbors: int = Field(5, ge=0, description="haar: neighbours a candidate needs to be kept.")
    haar_scale_factor: float = Field(1.1, gt=1.0, description="haar: scale step between pyramid levels.")
    min_face_size: int = Field(0, ge=0, description="Drop faces narrower than this many pixels (0: keep all).")
    retinaface_score_threshold: float = Field(
        0.6,
        gt=0,
        le=1,
        description="retinaface: keep faces whose score (the network's face probability) is at least this. "
        "0.6: precision 0.91 on a WIDER FACE sample (docs/benchmarks.md has the trade-off).",
    )
    retinaface_nms_iou: float = Field(
        0.4, gt=0, le=1, description="retinaface: drop a box whose overlap (IoU) with a better box exceeds this."
    )
    retinaface_scale: float = Field(
        1.0,
        gt=0,
        le=8,
        description="retinaface: resize frames by this before the network (after pipeline.detection_scale); "
        "the smallest anchor is 16 px, so 2.0 finds faces down to about 8 px, at about 4x the cost.",
    )
    retinaface_precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "fp32",
        description="retinaface: network precision. auto: bf16 on a CPU with bfloat16 units (amx_bf16 or "
        "avx512_bf16), else fp32; bf16 also on CUDA; fp16 only on CUDA. fp32 is the default: on CPU bf16 gained "
        "nothing steady and moved landmarks by up to 4.6 px (docs/benchmarks.md, 'bf16 on the CPU's matrix units').",
    )
    mmod_precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "fp32",
        description="mmod: network precision, as retinaface_precision. fp32 (default) gives dlib's own boxes; "
        "bf16 moves scores and may flip borderline boxes.",
    )


class LandmarksConfig(Section):
    points: Literal[5, 68] = Field(
        5,
        description="Landmark model: 5 (default, unrestricted) or 68 (trained on iBUG 300-W: "
        "NON-COMMERCIAL use only; needed for OpenFace alignment).",
    )
    alignment: Literal["detector", "shape_predictor"] = Field(
        "detector",
        description="How the face network's 150x150 chip is aligned: detector (default: the detector's own five "
        "landmarks mapped onto where they sit in dlib's chip; boxes without landmarks, from hog, mmod or haar, "
        "use the shape predictor, its 68 points cut to dlib's 5) or shape_predictor (dlib's landmark model "
        "fitted on every box, as dlib does). "
        "With retinaface, detector alignment measured better on LFW (0.9890 against 0.9855) and in open-set "
        "rank-1 (docs/accuracy.md).",
    )

    @field_validator("points", mode="before")
    @classmethod
    def _points_from_text(cls, value: Any) -> Any:
        # Environment values are text, and a Literal of ints takes no text: FACEWATCH_LANDMARKS__POINTS=68
        # was refused (found by tests/test_config_fuzz.py).
        return int(value) if isinstance(value, str) and value.strip() in ("5", "68") else value


# embedder.model's value for dlib's ResNet; any other value is a file of nn4.small2 weights.
DEFAULT_MODEL = "dlib-resnet"


class EmbedderConfig(Section):
    model: str = Field(
        DEFAULT_MODEL,
        min_length=1,
        description="The face network. dlib-resnet: dlib's ResNet (150x150 chips of dlib's alignment; LFW 0.989). "
        "Else the path of an nn4.small2 weights file (`facewatch train --out`, a state dict, or OpenFace's .t7): "
        "96x96 chips of OpenFace's alignment, embeddings of their own model_version (a watchlist enrolled with "
        "another model is refused: re-enroll). Its distances are not dlib's: set watchlist.match_threshold and "
        "unknown_threshold (and visitors' thresholds when visitors are on) from its own measurement; match_fmr "
        "cannot be used (docs/models.md, 'A trained model as the embedder').",
    )
    device: str = Field("auto", description="torch device for the face network (auto: CUDA when available).")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="Face network precision. auto (default): on a CPU with bfloat16 units (amx_bf16 or avx512_bf16 "
        "in /proc/cpuinfo) the streaming worker's watchlist search runs bf16 and embeds again in fp32 each face "
        "whose decision is within recheck_band of changing; templates, comparisons, evaluations and (with visitors "
        "on) the whole search stay fp32. Elsewhere (also CUDA) fp32. fp32, bf16 (CUDA or such a CPU), fp16 (CUDA): "
        "that precision everywhere, unchecked. Measured at batch 32 and one thread (the worker's): bf16 3.6x fp32's "
        "faces/s, 2.1x to 2.9x with the rechecks, and no decision of LFW's pairs or open set different from fp32's "
        "(bf16 alone: 0.13% and 0.39%; docs/benchmarks.md, 'bf16 on the CPU's matrix units').",
    )
    recheck_band: float = Field(
        0.01,
        ge=0.0,
        le=0.2,
        description="With a lowered search precision: faces whose nearest distance lies within this much of "
        "watchlist.match_threshold or unknown_threshold (or whose runner-up is that close to changing places) are "
        "embedded again in fp32 for their decision. bf16 moved LFW distances by at most 0.004. 0 turns the check "
        "off (bf16 decisions then differ from fp32's for 0.15% of LFW pairs).",
    )
    max_batch: int = Field(64, ge=1, le=4096, description="Largest batch of chips in one forward pass.")
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for torch. Default: one per core, except in the streaming pipeline (run, annotate, "
        "bench pipeline and streams), where the lanes already run in parallel: cores / pipeline.lanes (1 on 2 "
        "cores; measured there: 10 live 360p cameras kept up against 8 with 2 threads, bench pipeline 100 "
        "against 73 frames/s; docs/benchmarks.md).",
    )


class ImagesConfig(Section):
    max_pixels: int = Field(
        MAX_PIXELS_DEFAULT,
        ge=1,
        description="Refuse images (files, Kafka frames) of more pixels than this, read from the header before "
        "decoding. 24,000,000: a 24 MP photo (6000x4000) fits; `facewatch detect` needs about 0.33 GB + 48 bytes "
        "a pixel (1.6 GB for 24 MP, 3.4 GB at 7900x7900). Above 64,000,000 also raise OpenCV's own cap, "
        "OPENCV_IO_MAX_IMAGE_PIXELS.",
    )


# A per-user data folder (XDG's ~/.local/share), not the current folder: the store should not depend on
# where a command happens to run, nor land in a project checkout.
# $XDG_DATA_HOME replaces ~/.local/share when set (the XDG base directory rule; an absolute path only).
DEFAULT_STORE = Path("~/.local/share/facewatch/watchlist.db")
DEFAULT_VISITOR_STORE = Path("~/.local/share/facewatch/visitors.db")  # beside it, for the same reasons


def resolve_data_path(path: Path) -> Path:
    """``path`` with ~ expanded; one of the defaults under ~/.local/share moves to $XDG_DATA_HOME when that is set."""
    data_home = os.environ.get("XDG_DATA_HOME", "")
    if path in (DEFAULT_STORE, DEFAULT_VISITOR_STORE) and os.path.isabs(data_home):
        return Path(data_home) / path.relative_to("~/.local/share")
    try:
        return path.expanduser()
    except RuntimeError:  # ~name of a user that does not exist (found by tests/test_config_fuzz.py)
        raise ValueError(f"{str(path).split('/')[0]} is not a user's home folder") from None


class WatchlistConfig(Section):
    store: Path = Field(
        DEFAULT_STORE,
        validate_default=True,
        description="SQLite file of identities and templates. The default's folder is created (mode 700) when "
        "missing; another path's folder must exist. ~ means the user's home; $XDG_DATA_HOME, when set, replaces the "
        "default's ~/.local/share.",
    )
    index_kind: Literal["auto", "exact", "hnsw", "ivfpq"] = Field(
        "auto",
        description="FAISS index: auto (default: exact below 20,000 templates, ivfpq from there on; at 1M a batch "
        "of 32 faces in 7.5 ms p50, 8.6 ms p99 at recall@1 0.992 with the worker's one search thread on the idle "
        "2-core machine, docs/benchmarks.md), exact (brute force, fine to ~100k), "
        "hnsw or ivfpq. Removals never rebuild the index; it is compacted in the background once a quarter of "
        "it is removed templates.",
    )
    index_path: Path | None = Field(None, description="Where the index is saved. Default: the store path + .index")
    search_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="FAISS (OpenMP) threads per index search. 1: on the 2-core machine, busy with the models "
        "and other work, one thread searched 1M templates 2x faster than two (p50 of a 32-face batch; a second "
        "thread waits at every parallel region for a core), docs/benchmarks.md. Raise it on a machine with "
        "idle cores to spare.",
    )
    match_threshold: float = Field(
        0.5,
        gt=0,
        description="Distance at or below which the nearest identity is a match: 0.5 falsely matches 3.6e-4 of "
        "stranger comparisons on LFW (docs/accuracy.md says how to choose it for your list's size). "
        "Set this or match_fmr, not both.",
    )
    match_fmr: float | None = Field(
        None,
        ge=1e-6,
        le=0.1,
        description="The match threshold as a target 1:1 false-match rate (e.g. 1e-4): the largest distance "
        "whose FMR measured on LFW is at most this (docs/accuracy.md, 'Calibrated confidence'). Set this or "
        "match_threshold, not both.",
    )
    unknown_threshold: float = Field(
        0.6,
        gt=0,
        description="Distance above which a face is confidently unknown (dlib's 1:1 same-person threshold); "
        "in between: uncertain.",
    )
    ambiguity_margin: float = Field(
        0.05, ge=0, description="A match needs the runner-up identity at least this much farther away."
    )
    top_k: int = Field(10, ge=1, le=1000, description="Templates fetched per face before grouping by identity.")
    classifier: Literal["nearest", "svm"] = Field(
        "nearest",
        description="How a face's identity is chosen: nearest (the nearest template's identity and the two "
        "distance thresholds) or svm (OpenFace's linear SVM over the templates chooses among the top_k "
        "candidates within the match threshold; docs/watchlist.md, 'The SVM classifier'). The SVM is "
        "retrained on every change and needs svm_min_templates of every identity; until then the worker uses "
        "nearest and says so.",
    )
    svm_min_probability: float = Field(
        0.3,
        ge=0,
        le=1,
        description="svm: least class probability (coupled among the candidates) for a match; the candidate must "
        "also lie within the match threshold. 0.3 measured on LFW with 3 templates per person: 0.78 of mated "
        "probes named rightly, 0.2% wrongly, 1.7% of strangers named (docs/watchlist.md, 'The SVM classifier').",
    )
    svm_min_templates: int = Field(
        3,
        ge=1,
        description="svm: templates every identity needs before the SVM is trained (Platt scaling is fitted by "
        "cross-validation on them).",
    )
    svm_c: float = Field(10.0, gt=0, description="svm: the SVM's C (embeddings are unit-length: 1 underfits).")
    reload_interval_s: float = Field(1.0, gt=0, description="How often the worker checks the store for changes.")
    replication_topic: str | None = Field(
        None,
        description="Compacted Kafka topic that carries the watchlist to every replica (docs/operations.md). "
        "Workers follow it into their local store; watchlist commands publish their changes to it.",
    )
    erasure_wait_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="After a removal, how long to wait for other connections' reads to end so the removed "
        "data can be checkpointed out of the store's WAL and file. Past it the erasure stays pending "
        "(exit status 75, facewatch_watchlist_erasure_pending 1) and is retried.",
    )
    encryption_key: SecretStr | None = Field(
        None,
        description="AES-256 key, base64 of 32 random bytes (openssl rand -base64 32): the store keeps every "
        "name, metadata, photo source and embedding encrypted with AES-256-GCM, and no index file is saved "
        "(docs/security.md). Set it in the environment (FACEWATCH_WATCHLIST__ENCRYPTION_KEY), never in the config "
        "file. A store is opened only with the key it was encrypted with; `facewatch watchlist rekey` changes it.",
    )
    encryption_key_file: Path | None = Field(
        None,
        description="File holding the encryption key (a mounted Kubernetes Secret); instead of encryption_key.",
    )

    @field_validator("store", "index_path", "encryption_key_file")
    @classmethod
    def _home(cls, value: Path | None) -> Path | None:
        return resolve_data_path(value) if value is not None else None

    @property
    def match_distance(self) -> float:
        """The match threshold as a distance: match_threshold, or match_fmr resolved through the FMR table."""
        if self.match_fmr is None:
            return self.match_threshold
        return shipped_table().distance_at(self.match_fmr)

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> WatchlistConfig:
        if self.match_fmr is not None:
            if "match_threshold" in self.model_fields_set:
                raise ValueError("set match_threshold or match_fmr, not both")
            self.match_distance  # noqa: B018 -- a rate outside the measured table is an error now, not at startup
        if self.unknown_threshold < self.match_distance:
            unknown, match = self.unknown_threshold, self.match_distance
            name = "match_threshold" if self.match_fmr is None else f"match_fmr {self.match_fmr:g}'s distance"
            raise ValueError(f"unknown_threshold ({unknown}) must be at least {name} ({match:.3g})")
        return self

    @model_validator(mode="after")
    def _one_key(self) -> WatchlistConfig:
        if self.encryption_key is not None and self.encryption_key_file is not None:
            raise ValueError("set encryption_key or encryption_key_file, not both")
        return self


class EnrollmentConfig(Section):
    """The gates every enrolled face passes; docs/watchlist.md has the measurements behind each default."""

    min_face_size: int = Field(
        40,
        ge=0,
        description="Least face width in pixels. LFW faces shrunk to 35 px verify 7 points worse at distance 0.5 "
        "than at 45 px and up; HOG (upsample 1) finds faces from about 40 px.",
    )
    min_sharpness: float = Field(
        3.0,
        ge=0,
        description="Least variance of the Laplacian of the aligned 150x150 grey face. Below 3 the same "
        "person's distance climbs (LFW: median 0.48 at 2-3, 0.55 at 1-2, against 0.46 at 3-10); LFW photos "
        "score 14 and up (5th percentile), Miranda's faces in the Hamilton clip about 20 and up, its "
        "out-of-focus face 2.",
    )
    duplicate_distance: float = Field(
        0.1,
        ge=0,
        description="Skip a face closer than this to a template the person has or to another new face: "
        "catches re-saved (100%) and rescaled (92%) copies, never a mirrored or another photo.",
    )
    largest: bool = Field(False, description="Photos with several faces: take the largest (else reject the photo).")
    video_frames: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Frames analysed per video: spread evenly over a file, or over video_seconds of a live "
        "stream (640x360 video, HOG: 7-8 frames a second on 2 CPU cores).",
    )
    video_faces: int = Field(
        5, ge=1, le=1000, description="Most faces enrolled from one video: the best, spread over time."
    )
    video_seconds: float = Field(
        20.0, gt=0, description="Live streams (rtsp://): stop reading after this many seconds (wall time)."
    )


class CameraConfig(Section):
    id: str = Field(description="Camera id: the key of its frames and events. Letters, digits, . _ - only.")
    url: str = Field(
        description="rtsp://... or a video file path. ${VAR} is replaced by the environment variable VAR, "
        "so passwords stay out of config files."
    )
    loop: bool = Field(False, description="Files: start again at the end.")
    realtime: bool = Field(
        True, description="Files: pace frames at the file's frame rate (false: as fast as possible)."
    )

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not value or len(value) > 128 or not all(c.isalnum() or c in "._-" for c in value):
            raise ValueError("camera ids are 1-128 letters, digits, '.', '_' or '-'")
        return value


class RtspConfig(Section):
    open_timeout_s: float = Field(5.0, gt=0, description="RTSP cameras: longest wait to connect.")
    read_timeout_s: float = Field(5.0, gt=0, description="RTSP cameras: longest wait for data before reconnecting.")
    transport: Literal["tcp", "udp"] = Field(
        "tcp", description="RTSP transport: tcp (interleaved; works through NAT and firewalls) or udp."
    )
    max_backoff_s: float = Field(30.0, gt=0, description="RTSP cameras: longest wait between reconnection attempts.")


class KafkaConfig(Section):
    bootstrap_servers: str = Field("localhost:9092", description="Comma-separated host:port list of brokers.")
    client_id: str = Field("facewatch", description="Client id sent to the brokers.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field("PLAINTEXT")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(None)
    sasl_username: str | None = Field(None, description="SASL user (FACEWATCH_KAFKA__SASL_USERNAME).")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password: set it in the environment (FACEWATCH_KAFKA__SASL_PASSWORD)."
    )
    ssl_cafile: Path | None = Field(None, description="CA bundle for SSL.")
    retry_backoff_max_s: float = Field(30.0, gt=0, description="Longest wait between reconnection attempts.")


class FramesConfig(Section):
    enabled: bool = Field(False, description="Consume frames from Kafka (see docs/streaming.md for the format).")
    topic: str = Field("facewatch.frames", description="Topic of frame messages, keyed by camera id.")
    group_id: str = Field("facewatch-workers", description="Consumer group shared by all worker replicas.")
    dead_letter_topic: str = Field(
        "facewatch.frames.dead-letter", description="Where bad frames go, with facewatch_error headers."
    )
    max_message_bytes: int = Field(8_000_000, ge=1024, description="Frames larger than this are dead-lettered.")
    commit_interval_s: float = Field(1.0, gt=0, description="How often safe offsets are committed.")
    checkpoint_interval: int = Field(
        3000, ge=0, description="Tracks close every this many offsets of a partition so commits advance (0: never)."
    )
    session_timeout_ms: int = Field(10_000, ge=1000, description="Consumer group session timeout.")
    heartbeat_interval_ms: int = Field(2_000, ge=100, description="Consumer group heartbeat interval.")
    max_poll_records: int = Field(64, ge=1, description="Most frames fetched per poll.")
    broker_check_interval_s: float = Field(
        5.0,
        gt=0,
        description="When the frames consumer has heard nothing from the broker for this long, it asks a bootstrap "
        "server for its API versions on a fresh connection (waiting at most this long) to learn whether it answers.",
    )
    broker_timeout_s: float = Field(
        15.0,
        gt=0,
        description="Not ready (/readyz 503, facewatch_kafka_connected 0) once no request to the broker has "
        "succeeded for this long: three missed checks at the default interval.",
    )
    fetch_stall_s: float = Field(
        60.0,
        gt=0,
        description="Not ready once the assigned partitions have lag but no frame arrived for this long.",
    )
    commit_stall_s: float = Field(
        300.0,
        gt=0,
        description="Not live (/healthz 503, so Kubernetes restarts the worker) once processed frames could not be "
        "committed for this long: events not delivered, or the broker not answering. The restart replays "
        "from the last commit.",
    )


class PublishConfig(Section):
    max_pending_frames: int = Field(
        100,
        ge=1,
        description="facewatch publish: frames sent but not yet acknowledged by the broker. While the broker is "
        "away, a camera's frames beyond this are dropped and counted instead of piling up in memory (4 s of a 25 fps "
        "camera); a file read with --fast waits for room instead.",
    )
    give_up_after_s: float = Field(
        60.0,
        gt=0,
        description="facewatch publish: exit with status 2 once frames have waited this long without any being "
        "delivered (the broker unreachable); a supervisor restarts it.",
    )
    broker_timeout_s: float = Field(
        15.0,
        gt=0,
        description="facewatch publish: not ready (/readyz 503, facewatch_kafka_connected 0) once frames have waited "
        "this long without any being acknowledged; the worker's frames.broker_timeout_s.",
    )


class EventsConfig(Section):
    stdout: bool = Field(True, description="Print events as JSON lines on stdout.")
    kafka_topic: str | None = Field(None, description="Publish events to this Kafka topic, keyed by camera id.")
    thumbnails: bool = Field(
        False, description="Attach the face crop (JPEG, base64) to FaceMatch events. Off: events carry no pixels."
    )
    track_update_interval_s: float = Field(
        0.0,
        ge=0,
        description="Publish a track_updated event (box, decision so far) for each open track at most this often, "
        "in frame time, on frames where it is detected. 0: never (each track still has track_started, face_match "
        "and track_ended).",
    )


class PipelineConfig(Section):
    lanes: int = Field(2, ge=1, le=64, description="Parallel camera lanes (detection, tracking, alignment).")
    queue_size: int = Field(8, ge=1, description="Frames waiting per lane before sources are held back.")
    detect_every: int = Field(
        3,
        ge=1,
        description="Run the detector on frames whose sequence number is a multiple of this; track between "
        "(3: measured in docs/benchmarks.md, 'The pipeline at its defaults').",
    )
    detection_scale: float = Field(1.0, gt=0, le=4, description="Resize frames by this before detection.")
    max_batch: int = Field(32, ge=1, description="Embedding micro-batch: most faces in one forward pass.")
    max_wait_ms: float = Field(15.0, ge=0, description="Embedding micro-batch: longest wait for more faces.")


class TrackingConfig(Section):
    iou_threshold: float = Field(0.3, gt=0, lt=1, description="Least box overlap to continue a track.")
    max_age_s: float = Field(1.5, gt=0, description="A track ends after this long (frame time) without a detection.")
    correlation: bool = Field(
        False,
        description="Follow faces with dlib's correlation tracker between detections (off by default: it cost more "
        "than detection itself and found the enrolled person in fewer frames; docs/benchmarks.md).",
    )
    stale_camera_s: float = Field(10.0, gt=0, description="Close a silent camera's tracks after this long (wall time).")
    scene_cuts: bool = Field(
        True,
        description="End every track of a camera at a scene cut (a shot change, tested on every frame), so that a "
        "track never passes from one person to another across it (docs/streaming.md).",
    )
    scene_cut_threshold: float = Field(
        0.3,
        gt=0,
        le=1,
        description="A frame is a scene cut when its hue-saturation histogram (64x36 thumbnail) differs from the "
        "previous frame's by at least this (total variation, 0..1; 0.3: the Hamilton clip's cuts read 0.38 to 0.59, "
        "two frames of one shot up to 5 frames apart at most 0.19: docs/accuracy.md).",
    )


class DecisionsConfig(Section):
    min_faces: int = Field(2, ge=1, description="Faces of a track that must match an identity before it is announced.")
    min_vote_share: float = Field(
        0.5, gt=0, le=1, description="Share of the track's votes that must match it (uncertain faces abstain)."
    )
    cooldown_s: float = Field(
        60.0,
        ge=0,
        description="Do not announce the same identity on the same camera again within this (frame time; after a "
        "restart or rebalance, read back from events.kafka_topic: docs/streaming.md).",
    )
    min_quality: float = Field(
        MIN_QUALITY_DEFAULT,
        ge=0,
        le=1,
        description="Faces below this quality (0..1: size, sharpness, pose; worker/vision/quality.py) are tracked "
        "but do not vote (docs/accuracy.md says how it was measured).",
    )
    min_face_size: int = Field(
        MIN_FACE_SIZE_DEFAULT, ge=0, description="Faces narrower than this many pixels are tracked but do not vote."
    )
    quality_weighted: bool = Field(True, description="A face's vote weighs as much as its quality (false: 1 each).")
    restore_margin_s: float = Field(
        60.0,
        ge=0,
        description="After a restart or rebalance, the events topic is read back from cooldown_s plus this before the "
        "first frame (covers camera clocks ahead of the worker's, and cameras of one partition that lag each other).",
    )


class VisitorsConfig(Section):
    enabled: bool = Field(
        False,
        description="Cluster the tracks that end unknown into anonymous visitors and publish visit_started / "
        "visit_ended (docs/visitors.md). Off by default: it keeps biometric data of people who are on no list, "
        "which needs a legal basis and signage where it runs.",
    )
    store: Path = Field(
        DEFAULT_VISITOR_STORE,
        validate_default=True,
        description="SQLite file of visitors, visits and opt-outs. The default's folder is created (mode 700) when "
        "missing; another path's folder must exist. ~ means the user's home; $XDG_DATA_HOME, when set, replaces the "
        "default's ~/.local/share.",
    )
    threshold: float = Field(
        VISITOR_THRESHOLD_DEFAULT,
        gt=0,
        le=2,
        description="A track joins the nearest visitor whose centroid is at most this far (L2). Chosen on the "
        "LFW pairsDevTrain people with `facewatch eval cluster` (docs/accuracy.md, Visitor clustering).",
    )
    merge_threshold: float = Field(
        0.35,
        gt=0,
        le=2,
        description="Two visitors whose centroids come this close are merged (never two seen at the same time). "
        "0.35: the best BCubed F on the LFW threshold-choice people (docs/accuracy.md).",
    )
    min_faces: int = Field(
        3, ge=1, description="Faces of a track that must have been embedded for it to count as a visitor's track."
    )
    visit_gap_s: float = Field(
        1800.0,
        gt=0,
        description="A visitor's visit to a zone ends after this long without a track of theirs there; the next "
        "track starts a new visit (30 min: the usual web-analytics session gap).",
    )
    zones: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Zone name -> camera ids. A camera in no zone is its own zone. Visits are per visitor and zone.",
    )
    retention_hours: float = Field(
        12.0,
        gt=0,
        description="Visitors (centroids) and track embeddings are deleted this long after they were last seen; "
        "a visitor who comes back later is a new visitor.",
    )
    aggregate_retention_days: float = Field(
        90.0, gt=0, description="Visits (no embeddings: visitor id, zone, times) are kept this long for reports."
    )
    purge_interval_s: float = Field(60.0, gt=0, description="How often the worker purges what is past retention.")
    opt_out_threshold: float = Field(
        0.55,
        gt=0,
        le=2,
        description="A track this close to a face on the opt-out list is never counted (wider than the "
        "clustering threshold: a missed opt-out is worse than a missed visitor).",
    )

    @field_validator("store")
    @classmethod
    def _home(cls, value: Path) -> Path:
        return resolve_data_path(value)

    @model_validator(mode="after")
    def _zones_are_disjoint(self) -> VisitorsConfig:
        seen: dict[str, str] = {}
        for zone, cameras in self.zones.items():
            if not zone or len(zone) > 128 or not all(c.isalnum() or c in "._-" for c in zone):
                raise ValueError(f"zone name {zone!r}: letters, digits, . _ - only (it is a metric label)")
            for camera in cameras:
                if camera in seen:
                    raise ValueError(f"camera {camera!r} is in zones {seen[camera]!r} and {zone!r}")
                seen[camera] = zone
        return self

    def zone_of(self, camera_id: str) -> str:
        """The zone of a camera: its configured zone, else the camera id itself."""
        for zone, cameras in self.zones.items():
            if camera_id in cameras:
                return zone
        return camera_id


class HttpConfig(Section):
    host: str = Field("0.0.0.0", description="Address of the /metrics, /healthz, /readyz server.")
    port: int = Field(
        8790,
        ge=0,
        le=65535,
        description="Port of the /metrics, /healthz, /readyz server (0: off). Not 9100: node_exporter runs there on "
        "most hosts; 8790 is outside Prometheus' exporter range (9100-9999, all allocated).",
    )


class AdminConfig(Section):
    """The admin API (`facewatch admin serve`, docs/admin_api.md)."""

    host: str = Field("127.0.0.1", description="Address the admin API listens on (0.0.0.0 in a container).")
    port: int = Field(8791, ge=0, le=65535, description="Port of the admin API (0: any free port).")
    tokens: str | None = Field(
        None,
        description="Bearer tokens, hashed: one 'NAME:SCOPES:SHA256' per line (scopes read, write, admin, joined "
        "by '+'); `facewatch admin token NAME` makes one. Added to those of tokens_file.",
    )
    tokens_file: Path | None = Field(
        None, description="File of hashed tokens, same format (a mounted Kubernetes Secret); re-read on change."
    )
    tls_cert: Path | None = Field(None, description="PEM certificate (chain): serve HTTPS. Needs tls_key.")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    max_request_bytes: int = Field(
        20 * 1024 * 1024,
        ge=1024,
        description="Largest request body (all photos of one upload): 20 MiB, a few phone photos; larger gets 413.",
    )
    rate_per_minute: float = Field(
        120.0, gt=0, description="Requests per minute per token (and per address for failed logins); burst the same."
    )
    idle_timeout_s: float = Field(
        10.0, gt=0, description="A connection that sends nothing for this long is closed (it holds a thread)."
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> AdminConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class AuditConfig(Section):
    """The append-only audit log of watchlist changes and identify calls (docs/admin_api.md)."""

    path: Path | None = Field(
        None, description="JSON-lines audit log. Default: the watchlist store's path + .audit.jsonl."
    )
    max_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Rotate the log when it reaches this size (10 MiB).")
    retention_days: float = Field(
        365.0,
        gt=0,
        description="Rotated logs whose newest entry is older than this are deleted (a year: a common audit period).",
    )

    @field_validator("path")
    @classmethod
    def _home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


class ShutdownConfig(Section):
    drain_timeout_s: float = Field(
        20.0,
        gt=0,
        description="On SIGTERM, and when a rebalance takes partitions away: most time to finish frames in flight.",
    )


_yaml_data: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("facewatch_yaml", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    """Feeds the parsed YAML file (set by load_settings) to pydantic-settings."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_yaml_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_data.get() or {})


class Settings(BaseSettings):
    """Everything facewatch can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    models: ModelsConfig = Field(default_factory=ModelsConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    landmarks: LandmarksConfig = Field(default_factory=LandmarksConfig)
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    watchlist: WatchlistConfig = Field(default_factory=WatchlistConfig)
    enrollment: EnrollmentConfig = Field(default_factory=EnrollmentConfig)
    cameras: list[CameraConfig] = Field(
        default_factory=list, description="The cameras this worker reads directly (RTSP or video files)."
    )
    rtsp: RtspConfig = Field(default_factory=RtspConfig)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    frames: FramesConfig = Field(default_factory=FramesConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    decisions: DecisionsConfig = Field(default_factory=DecisionsConfig)
    visitors: VisitorsConfig = Field(default_factory=VisitorsConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)

    @model_validator(mode="after")
    def _trained_model_thresholds(self) -> Settings:
        if self.embedder.model == DEFAULT_MODEL:
            return self
        # The defaults are distances measured for dlib's ResNet; another network's scale is its own.
        where = f"embedder.model is {self.embedder.model!r}, not dlib's ResNet"
        if self.watchlist.match_fmr is not None:
            raise ValueError(f"{where}: watchlist.match_fmr reads dlib's FMR table; set match_threshold instead")
        sections = [("watchlist", self.watchlist, ("match_threshold", "unknown_threshold"))]
        if self.visitors.enabled:
            sections.append(("visitors", self.visitors, ("threshold", "merge_threshold", "opt_out_threshold")))
        missing = [f"{name}.{key}" for name, section, keys in sections for key in keys
                   if key not in section.model_fields_set]  # fmt: skip
        if missing:
            raise ValueError(
                f"{where}: set {', '.join(missing)} for it (the defaults are dlib's distances; docs/models.md says "
                "how to measure them)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlSource(settings_cls)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is not valid YAML: nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # e.g. a date like 2001-13-45, which YAML resolves to a datetime
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    odd = [key for key in data if not isinstance(key, str)]
    if odd:  # YAML allows keys like 1 or null; section names are text (found by tests/test_config_fuzz.py)
        raise ConfigError(f"config file {path}: {odd[0]!r} is not a section name")
    return data


def _check_env_names(environ: os._Environ[str] | dict[str, str]) -> None:
    sections = set(Settings.model_fields)
    for name in environ:
        if not name.startswith(ENV_PREFIX) or name in _OTHER_ENV:
            continue
        section = name[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if section not in sections:
            shown = name if name.isprintable() else repr(name)  # errors are one line
            raise ConfigError(
                f"unknown environment variable {shown}: no config section {section!r} "
                f"(sections: {', '.join(sorted(sections))})"
            )


def _describe(error: dict[str, Any]) -> str:
    # A key from the file may hold any character: shown quoted when it is not printable (errors are one line).
    key = ".".join(str(part) if str(part).isprintable() else repr(part) for part in error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    value = error.get("input")
    secret = any(word in key for word in ("password", "url", "encryption_key"))  # never echo what may hold a credential
    quiet = error["type"] in ("extra_forbidden", "missing") or isinstance(value, dict) or secret
    shown = "" if quiet else f" (got {value!r})"
    return f"{key}: {message}{shown}"


def load_settings(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings from flags (``overrides``, nested dicts), env, the YAML file and defaults.

    Raises ConfigError naming the offending key.
    """
    path = config_file or os.environ.get(CONFIG_FILE_ENV) or None
    data = _read_yaml(Path(path)) if path else {}
    _check_env_names(os.environ)
    overrides = dict(overrides or {})
    if os.environ.get("FACEWATCH_MODEL_DIR") and "FACEWATCH_MODELS__DIR" not in os.environ:
        models = overrides.setdefault("models", {})
        models.setdefault("dir", os.environ["FACEWATCH_MODEL_DIR"])
    kafka_section = data.get("kafka")
    if isinstance(kafka_section, dict) and "sasl_password" in kafka_section:
        where = f"config file {path}"
        raise ConfigError(f"{where}: kafka.sasl_password belongs in the environment (FACEWATCH_KAFKA__SASL_PASSWORD)")
    watchlist_section = data.get("watchlist")
    if isinstance(watchlist_section, dict) and "encryption_key" in watchlist_section:
        raise ConfigError(
            f"config file {path}: watchlist.encryption_key belongs in the environment "
            "(FACEWATCH_WATCHLIST__ENCRYPTION_KEY) or in watchlist.encryption_key_file"
        )
    token = _yaml_data.set(data)
    try:
        settings = Settings(**overrides)
        if settings.kafka.sasl_password is not None:
            register_secret(settings.kafka.sasl_password.get_secret_value())
        if settings.watchlist.encryption_key is not None:
            register_secret(settings.watchlist.encryption_key.get_secret_value())
        return settings
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        where = f" (config file {path})" if path else ""
        raise ConfigError(f"invalid configuration{where}: {problems}") from None
    except SettingsError as exc:  # e.g. FACEWATCH_CAMERAS='not json'
        cause = exc.__cause__ or exc
        raise ConfigError(f"invalid configuration: {exc} ({type(cause).__name__})") from None
    finally:
        _yaml_data.reset(token)
