"""Open-set identification on a folder-per-identity dataset: who is this, or nobody on the list?

Protocol. Every identity with two or more images is enrolled with its first image (sorted by
name) as the gallery; its other images are mated probes. Every identity with exactly one image
is not enrolled, and that image is a non-mated probe: an unknown face the watchlist must reject.
Each probe is compared with the whole gallery; its nearest gallery embedding decides.

Metrics (the vocabulary of ISO/IEC 19795-1 and NIST FRVT 1:N):
- rank-1 identification rate: fraction of mated probes whose nearest gallery identity is right,
  with no threshold.
- FPIR(t): fraction of non-mated probes whose nearest distance is <= t (a stranger raises an alarm).
- TPIR(t): fraction of mated probes whose nearest identity is right and whose distance is <= t;
  FNIR(t) = 1 - TPIR(t), the miss rate NIST FRTE 1:N plots against FPIR in its DET curves.
The threshold for a target FPIR is the largest t whose FPIR does not exceed the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.errors import FacewatchError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Probes without an embedding (no readable face) never match: they count as misses, never as alarms.
NO_EMBEDDING = np.inf


class DatasetError(FacewatchError):
    """A dataset folder is missing or has no usable layout."""


def dataset_images_root(directory: Path) -> Path:
    """The folder of per-identity folders: ``directory`` itself, or its ``images`` child (LFW layout)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"dataset folder {directory} does not exist")
    images = directory / "images"
    return images if images.is_dir() else directory


def list_identities(directory: Path, people: set[str] | None = None) -> dict[str, list[Path]]:
    """Identity name -> its image files (sorted), for every sub-folder holding at least one image (of ``people``
    only, when given)."""
    root = dataset_images_root(directory)
    identities: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and (people is None or p.name in people)):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if images:
            identities[folder.name] = images
    if not identities:
        if people is not None:
            raise DatasetError(f"{root} has no folder of any of the {len(people)} people asked for")
        raise DatasetError(f"{root} has no identity folders with images (expected <root>/<person>/<image>.jpg)")
    return identities


@dataclass(frozen=True)
class OpenSetSplit:
    """Gallery and probes; labels index ``names``."""

    names: list[str]
    gallery: list[Path]
    gallery_labels: np.ndarray
    mated: list[Path]
    mated_labels: np.ndarray
    non_mated: list[Path]


def split_open_set(identities: dict[str, list[Path]]) -> OpenSetSplit:
    """Enroll the first image of each multi-image identity; the rest are mated, singletons non-mated."""
    names = sorted(name for name, images in identities.items() if len(images) >= 2)
    gallery = [identities[name][0] for name in names]
    mated = [(path, label) for label, name in enumerate(names) for path in identities[name][1:]]
    non_mated = [images[0] for images in identities.values() if len(images) == 1]
    if not names:
        raise DatasetError("no identity has two or more images, so nothing can be enrolled and probed")
    if not non_mated:
        raise DatasetError("no identity has exactly one image, so there are no non-mated probes to measure FPIR")
    return OpenSetSplit(
        names=names,
        gallery=gallery,
        gallery_labels=np.arange(len(names)),
        mated=[path for path, _ in mated],
        mated_labels=np.array([label for _, label in mated], np.int64),
        non_mated=non_mated,
    )


def nearest_gallery(probes: np.ndarray, gallery: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(index, Euclidean distance) of each probe's nearest gallery row; NaN rows are skipped.

    NaN probes get index -1 and distance inf; NaN gallery rows are never nearest.
    """
    # float64: the expanded square below loses ~1e-5 to cancellation in float32, near thresholds.
    probes = np.asarray(probes, np.float64)
    gallery = np.asarray(gallery, np.float64)
    usable = ~np.isnan(gallery).any(axis=1)
    clean = np.where(usable[:, None], gallery, 0.0)
    norms = np.einsum("ij,ij->i", clean, clean)
    index = np.full(len(probes), -1, np.int64)
    distance = np.full(len(probes), NO_EMBEDDING, np.float64)
    for start in range(0, len(probes), chunk):
        block = probes[start : start + chunk]
        ok = ~np.isnan(block).any(axis=1)
        if not ok.any() or not usable.any():
            continue
        rows = block[ok]
        # |p - g|^2 = |p|^2 - 2 p.g + |g|^2, one matrix product per chunk.
        squared = np.einsum("ij,ij->i", rows, rows)[:, None] - 2.0 * rows @ clean.T + norms[None, :]
        squared[:, ~usable] = np.inf
        best = np.argmin(squared, axis=1)
        positions = np.flatnonzero(ok) + start
        index[positions] = best
        distance[positions] = np.sqrt(np.maximum(squared[np.arange(len(best)), best], 0.0))
    return index, distance


def threshold_at_fpir(non_mated_distances: np.ndarray, fpir: float) -> float:
    """The largest threshold t with mean(non_mated_distances <= t) <= fpir.

    Allowed alarms: floor(fpir * count). With k allowed, t sits just below the (k+1)-th smallest
    distance (ties included), so exactly the k or fewer smaller distances fall at or under it.
    """
    distances = np.sort(np.asarray(non_mated_distances, np.float64))
    if len(distances) == 0:
        raise DatasetError("no non-mated probes: FPIR is undefined")
    allowed = int(np.floor(fpir * len(distances) + 1e-9))
    if allowed >= len(distances):
        return float(distances[-1])
    cut = distances[allowed]
    # The largest float below the first disallowed distance keeps every tie with it out.
    return float(np.nextafter(cut, -np.inf))


def fpir_at(non_mated_distances: np.ndarray, threshold: float) -> float:
    """Fraction of non-mated probes whose nearest distance is <= ``threshold``."""
    return float(np.mean(np.asarray(non_mated_distances) <= threshold))


def tpir_at(correct: np.ndarray, mated_distances: np.ndarray, threshold: float) -> float:
    """Fraction of mated probes identified correctly at distance <= ``threshold``."""
    return float(np.mean(np.asarray(correct, bool) & (np.asarray(mated_distances) <= threshold)))


@dataclass(frozen=True)
class OpenSetDistances:
    """Each probe's search result: what every open-set metric and plot is computed from."""

    correct: np.ndarray  # (mated,) bool: the nearest gallery identity is the probe's own
    mated: np.ndarray  # (mated,) distance to the nearest gallery entry
    same_person: np.ndarray  # (mated,) distance to the probe's own gallery entry (inf: no embedding)
    non_mated: np.ndarray  # (non-mated,) distance to the nearest gallery entry: a stranger's best match


def open_set_distances(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    mated: np.ndarray,
    mated_labels: np.ndarray,
    non_mated: np.ndarray,
) -> OpenSetDistances:
    """Search every probe against the gallery (nearest neighbour, Euclidean)."""
    if len(mated) == 0:
        raise DatasetError("no mated probes: TPIR is undefined")
    mated_index, mated_distance = nearest_gallery(mated, gallery)
    _, non_mated_distance = nearest_gallery(non_mated, gallery)
    labels = np.asarray(gallery_labels)
    mated_labels = np.asarray(mated_labels)
    predicted = np.where(mated_index >= 0, labels[np.maximum(mated_index, 0)], -1)
    # One gallery entry per identity: the mate's row is where its label sits.
    row_of_label = {int(label): row for row, label in enumerate(labels)}
    own = np.asarray(gallery, np.float64)[[row_of_label[int(label)] for label in mated_labels]]
    same_person = np.linalg.norm(np.asarray(mated, np.float64) - own, axis=1)
    return OpenSetDistances(
        correct=predicted == mated_labels,
        mated=mated_distance,
        same_person=np.where(np.isnan(same_person), NO_EMBEDDING, same_person),
        non_mated=non_mated_distance,
    )


def det_curve(distances: OpenSetDistances) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, FPIR, FNIR) at every distance where either changes, in increasing threshold order.

    FNIR(t) = 1 - TPIR(t): the fraction of mated probes not identified correctly within t (NIST FRTE 1:N's
    miss rate, which counts a wrong rank-1 identity as a miss at every threshold).
    """
    finite = np.concatenate([distances.mated, distances.non_mated])
    thresholds = np.unique(finite[np.isfinite(finite)])
    hits = np.sort(distances.mated[distances.correct & np.isfinite(distances.mated)])
    alarms = np.sort(distances.non_mated[np.isfinite(distances.non_mated)])
    # searchsorted(side="right") counts the distances at or under each threshold.
    tpir = np.searchsorted(hits, thresholds, side="right") / len(distances.mated)
    fpir = np.searchsorted(alarms, thresholds, side="right") / len(distances.non_mated)
    return thresholds, fpir, 1.0 - tpir


def open_set_metrics(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    mated: np.ndarray,
    mated_labels: np.ndarray,
    non_mated: np.ndarray,
    fpirs: Sequence[float] = (0.01, 0.001),
    fixed_thresholds: Sequence[float] = (),
) -> dict[str, float | int]:
    """Rank-1 rate, TPIR with its threshold at each target FPIR, and TPIR/FPIR at fixed thresholds."""
    distances = open_set_distances(gallery, gallery_labels, mated, mated_labels, non_mated)
    return metrics_from_distances(distances, fpirs, fixed_thresholds)


def metrics_from_distances(
    distances: OpenSetDistances, fpirs: Sequence[float] = (0.01, 0.001), fixed_thresholds: Sequence[float] = ()
) -> dict[str, float | int]:
    """``open_set_metrics`` from searches already made."""
    correct, mated_distance, non_mated_distance = distances.correct, distances.mated, distances.non_mated
    metrics: dict[str, float | int] = {"rank1": round(float(np.mean(correct)), 6)}
    for fpir in fpirs:
        threshold = threshold_at_fpir(non_mated_distance, fpir)
        tag = f"{fpir * 100:g}".replace(".", "_")
        metrics[f"tpir_at_fpir_{tag}pct"] = round(tpir_at(correct, mated_distance, threshold), 6)
        # Unrounded: rounding up could let a non-mated distance in and break the FPIR bound.
        metrics[f"threshold_at_fpir_{tag}pct"] = threshold
        metrics[f"fpir_measured_{tag}pct"] = round(fpir_at(non_mated_distance, threshold), 6)
    for threshold in fixed_thresholds:
        tag = f"{threshold:g}".replace(".", "_")
        metrics[f"tpir_at_{tag}"] = round(tpir_at(correct, mated_distance, threshold), 6)
        metrics[f"fpir_at_{tag}"] = round(fpir_at(non_mated_distance, threshold), 6)
    return metrics
