"""Helpers shared by the CLI commands: flags that map to config keys, output, error reporting."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from worker.config import Settings, load_settings
from worker.text import utf8_values
from worker.vision.detectors import DETECTORS
from worker.vision.landmarks import LANDMARK_LICENCE_NOTE

PROG = "facewatch"


def add_model_flags(parser: argparse.ArgumentParser, detector: bool = True, landmarks: bool = True) -> None:
    """Flags for choosing the detector, landmark model and devices (each overrides a config key)."""
    if detector:
        parser.add_argument(
            "--detector", choices=DETECTORS, help="face detector (config detector.name; default retinaface)"
        )
        parser.add_argument(
            "--upsample", type=int, help="hog/mmod: upsample the image N times first (detector.upsample)"
        )
        parser.add_argument("--detector-device", help="mmod/retinaface: torch device (detector.device)")
    if landmarks:
        parser.add_argument(
            "--landmarks",
            type=int,
            choices=(5, 68),
            help=f"landmark model: 5 points (default) or 68 points; NOTE: {LANDMARK_LICENCE_NOTE}",
        )
        parser.add_argument("--device", help="torch device for embeddings: auto, cpu, cuda, cuda:N (embedder.device)")
    parser.add_argument("--model-dir", help="folder with dlib's model files (models.dir)")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Nested config overrides for the flags that were given."""
    mapping = {
        "detector": ("detector", "name"),
        "upsample": ("detector", "upsample"),
        "detector_device": ("detector", "device"),
        "landmarks": ("landmarks", "points"),
        "device": ("embedder", "device"),
        "model_dir": ("models", "dir"),
        "watchlist_store": ("watchlist", "store"),
        "enroll_min_face_size": ("enrollment", "min_face_size"),
        "enroll_min_sharpness": ("enrollment", "min_sharpness"),
        "enroll_duplicate_distance": ("enrollment", "duplicate_distance"),
        "enroll_largest": ("enrollment", "largest"),
        "enroll_video_frames": ("enrollment", "video_frames"),
        "enroll_video_faces": ("enrollment", "video_faces"),
        "enroll_video_seconds": ("enrollment", "video_seconds"),
        "http_port": ("http", "port"),
        "classifier": ("watchlist", "classifier"),
        "svm_threshold": ("watchlist", "svm_min_probability"),
    }
    overrides: dict[str, Any] = {}
    for attribute, (section, key) in mapping.items():
        value = getattr(args, attribute, None)
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return overrides


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from --config, the environment and the command's flags."""
    return load_settings(getattr(args, "config", None), overrides_from_args(args))


def emit(record: dict[str, Any]) -> None:
    """Print one JSON object as a line on stdout, right away (output is often piped).

    File names that are not UTF-8 have their stray bytes written as ``\\xNN`` (worker/text.py): JSON
    strings cannot hold the lone surrogates Python decodes them to.
    """
    sys.stdout.write(json.dumps(utf8_values(record), separators=(", ", ": ")) + "\n")
    sys.stdout.flush()


def report_error(message: str) -> None:
    """One line on stderr, prefixed like argparse's errors."""
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()
