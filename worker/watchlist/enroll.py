"""Enrollment: photos of a person -> checked, de-duplicated templates in the watchlist store.

Every photo passes quality gates before it becomes a template, and every rejected photo is
reported with its reason:

- it decodes (``unreadable``);
- it shows exactly one face (``no face``, ``N faces``), unless ``largest`` is set, in which case
  the largest face is taken;
- the face is at least ``min_face_size`` pixels wide (``face too small``);
- the aligned face is sharp enough: variance of the Laplacian of the 150x150 grey chip at least
  ``min_sharpness`` (``too blurry``);
- it is not a near-duplicate (distance under ``duplicate_distance``) of a template the identity
  already has or of another photo in the same batch (``near-duplicate``).

``quality`` in [0, 1] = min(1, sharpness / (4 * min_sharpness)) * min(1, face width / 150): a
sharp face at the chip's own resolution scores 1.

A folder-per-identity tree (``import_tree``) enrolls each sub-folder as one identity named after
the folder (underscores read as spaces); a name already in the watchlist gets the new photos, so
importing the same tree again adds nothing (every photo is then a near-duplicate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from worker.errors import ImageError, WatchlistError
from worker.recognition import FaceRecognizer
from worker.vision.boxes import Box
from worker.vision.image import load_image
from worker.watchlist.store import Identity, WatchlistStore

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
CHUNK = 16  # photos decoded and embedded together


@dataclass(frozen=True)
class EnrollRules:
    """Quality gates (the CLI sets ``largest`` with --largest; the others keep these defaults)."""

    min_face_size: int = 60
    min_sharpness: float = 15.0
    duplicate_distance: float = 0.1
    largest: bool = False


@dataclass(frozen=True)
class Accepted:
    path: str
    template_id: int
    quality: float
    box: Box


@dataclass(frozen=True)
class Rejected:
    path: str
    reason: str


@dataclass
class EnrollReport:
    """What one enrollment did: the identity (None if nothing was accepted for a new name)."""

    name: str
    identity: Identity | None
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "identity": self.identity.id if self.identity else None,
            "accepted": [
                {"image": a.path, "template": a.template_id, "quality": round(a.quality, 3)} for a in self.accepted
            ],
            "rejected": [{"image": r.path, "reason": r.reason} for r in self.rejected],
        }


def sharpness(chips: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of each chip's grey image: (N, H, W, 3) uint8 -> (N,)."""
    if len(chips) == 0:
        return np.zeros(0)
    grey = chips.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    laplacian = (
        grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] - 4.0 * grey[:, 1:-1, 1:-1]
    )
    return laplacian.reshape(len(chips), -1).var(axis=1)


class Enroller:
    """Enrolls photos into a store, with the recognizer's detector, landmarks and embedder."""

    def __init__(
        self,
        recognizer: FaceRecognizer,
        store: WatchlistStore,
        rules: EnrollRules | None = None,
        progress: bool = False,
    ) -> None:
        self.recognizer = recognizer
        self.store = store
        self.rules = rules or EnrollRules()
        self.progress = progress

    def _face(self, path: str, image: np.ndarray) -> tuple[Box | None, str | None]:
        boxes = self.recognizer.detect([image])[0]
        if not boxes:
            return None, "no face"
        if len(boxes) > 1 and not self.rules.largest:
            return None, f"{len(boxes)} faces (enroll a photo of one person, or use --largest)"
        box = max(boxes, key=lambda b: b.area)
        if box.width < self.rules.min_face_size:
            return None, f"face too small ({box.width} px wide, minimum {self.rules.min_face_size})"
        return box, None

    def _candidates(
        self, paths: Sequence[str | Path], bar: tqdm
    ) -> tuple[list[tuple[str, Box, np.ndarray, float]], list[Rejected]]:
        """(path, box, embedding, quality) for each photo that passes the gates, and the rejections."""
        found: list[tuple[str, Box, np.ndarray, float]] = []
        rejected: list[Rejected] = []
        paths = [str(p) for p in paths]
        for start in range(0, len(paths), CHUNK):
            images, boxes, names = [], [], []
            for path in paths[start : start + CHUNK]:
                try:
                    image = load_image(path, self.recognizer.settings.images.max_pixels)
                except ImageError as exc:
                    rejected.append(Rejected(path, f"unreadable: {exc}"))
                    continue
                box, reason = self._face(path, image)
                if box is None:
                    rejected.append(Rejected(path, reason or "no face"))
                    continue
                images.append(image)
                boxes.append([box])
                names.append(path)
            bar.update(min(CHUNK, len(paths) - start))
            if not images:
                continue
            faces = self.recognizer.analyze(images, boxes)
            chips = np.concatenate([f.chips for f in faces])
            embeddings = np.concatenate([f.embeddings for f in faces])
            sharp = sharpness(chips)
            for path, (box,), embedding, value in zip(names, boxes, embeddings, sharp, strict=True):
                if value < self.rules.min_sharpness:
                    rejected.append(
                        Rejected(path, f"too blurry (sharpness {value:.0f}, minimum {self.rules.min_sharpness:g})")
                    )
                    continue
                quality = min(1.0, value / (4 * self.rules.min_sharpness)) * min(1.0, box.width / 150.0)
                found.append((path, box, embedding, float(quality)))
        return found, rejected

    def enroll(
        self,
        name: str,
        paths: Sequence[str | Path],
        metadata: dict[str, Any] | None = None,
        identity_id: str | None = None,
    ) -> EnrollReport:
        """Enroll photos as ``name``: a new identity (with ``identity_id`` if given, else a new UUID),
        or, when ``identity_id`` names an existing identity, more photos of that one."""
        existing = self.store.find_identity(identity_id) if identity_id else None
        report = EnrollReport(name if existing is None else existing.name, existing)
        with tqdm(total=len(paths), desc=f"enrolling {report.name}", unit="photo", disable=not self.progress) as bar:
            candidates, report.rejected = self._candidates(paths, bar)
        kept = self._without_duplicates(existing, candidates, report)
        if not kept:
            return report
        embeddings = np.stack([embedding for _, _, embedding, _ in kept])
        sources = [path for path, _, _, _ in kept]
        qualities = [quality for _, _, _, quality in kept]
        model_version = self.recognizer.embedder.model_version
        if existing is None:
            # Identity and templates in one transaction: a crash never leaves a person without faces.
            report.identity, ids = self.store.add_identity_with_templates(
                name, embeddings, metadata, identity_id, sources, qualities, model_version
            )
        else:
            ids = self.store.add_templates(existing.id, embeddings, sources, qualities, model_version)
        report.accepted = [
            Accepted(path, tid, quality, box) for (path, box, _, quality), tid in zip(kept, ids, strict=True)
        ]
        return report

    def _without_duplicates(
        self,
        identity: Identity | None,
        candidates: list[tuple[str, Box, np.ndarray, float]],
        report: EnrollReport,
    ) -> list[tuple[str, Box, np.ndarray, float]]:
        known = [t.embedding for t in self.store.templates(identity.id)] if identity else []
        kept: list[tuple[str, Box, np.ndarray, float]] = []
        # Best photos first, so the sharper of two near-identical photos is the one kept.
        for candidate in sorted(candidates, key=lambda c: -c[3]):
            embedding = candidate[2]
            others = np.array(known + [k[2] for k in kept], np.float32).reshape(-1, embedding.shape[0])
            if len(others):
                nearest = float(np.linalg.norm(others - embedding, axis=1).min())
                if nearest < self.rules.duplicate_distance:
                    report.rejected.append(Rejected(candidate[0], f"near-duplicate (distance {nearest:.3f})"))
                    continue
            kept.append(candidate)
        return kept

    def import_tree(self, root: str | Path) -> list[EnrollReport]:
        """Enroll each sub-folder of ``root`` as one identity named after it."""
        root = Path(root)
        if not root.is_dir():
            raise WatchlistError(f"{root} is not a folder")
        by_name = {identity.name: identity for identity in self.store.list_identities()}
        reports = []
        stray = sorted(p for p in root.iterdir() if p.is_file())
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        if not folders:
            raise WatchlistError(f"{root} has no sub-folders: expected one folder of photos per person")
        for folder in tqdm(folders, desc="importing identities", unit="person", disable=not self.progress):
            name = folder.name.replace("_", " ")
            photos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            skipped = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES)
            known = by_name.get(name)
            report = self.enroll(name, photos, identity_id=known.id if known else None)
            report.rejected += [Rejected(str(p), "not an image file (by its extension)") for p in skipped]
            if not photos:
                report.rejected.append(Rejected(str(folder), "folder has no photos"))
            reports.append(report)
        if stray:
            reports.append(
                EnrollReport("(root)", None, rejected=[Rejected(str(p), "not in a person's folder") for p in stray])
            )
        return reports
