"""Decision flips of bf16 against fp32 on LFW: verification pairs and open-set identification.

    PYTHONPATH=. .venv/bin/python scripts/precision_flips.py --dataset ../shared/data/lfw [--end-to-end]

Every image of the LFW tree is detected and aligned once, with the default settings in fp32; each
chunk of chips is then embedded twice, by the fp32 embedder and by the bf16 one ("embedder bf16":
the same chips, so only the network's arithmetic differs). With --end-to-end the tree is also run
with the detector in bf16 as well (boxes and landmarks move too: "all bf16"; about as long again).

Decisions at the watchlist's default thresholds (watchlist.match_threshold, unknown_threshold):
distance <= match: match; <= unknown: uncertain; else unknown. LFW: the pairs of pairs.txt (View 2).
Open set: `facewatch eval identify`'s split (first image of each multi-image person enrolled, the
rest mated probes, single-image people non-mated probes); a probe's decision is its nearest gallery
identity's distance class, and a match that names another identity counts as a flip too. The
watchlist's ambiguity margin (runner-up identity) is not applied: it only turns matches into
uncertain, the same way in both precisions. Prints one table row per (mode, eval).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from worker.bench.timing import format_table
from worker.config import Settings, load_settings
from worker.embed.embedder import FaceEmbedder
from worker.evaluation.dataset import DatasetEmbedder
from worker.evaluation.lfw import read_pairs
from worker.evaluation.openset import list_identities, nearest_gallery, split_open_set
from worker.recognition import FaceRecognizer

MATCH, UNCERTAIN, UNKNOWN = 0, 1, 2
COLUMNS = (
    ("mode", "mode"),
    ("eval", "eval"),
    ("decisions", "decisions"),
    ("flips", "flips"),
    ("flip_pct", "flips %"),
    ("to_match", "-> match"),
    ("to_uncertain", "-> uncertain"),
    ("to_unknown", "-> unknown"),
    ("other_identity", "other identity"),
    ("max_abs_change", "max |d change|"),
    ("p99_abs_change", "p99 |d change|"),
)


class TeeEmbedder:
    """Returns the fp32 embedder's descriptors and keeps the bf16 embedder's for the same chips, in call order."""

    def __init__(self, reference: FaceEmbedder, other: FaceEmbedder) -> None:
        self.reference = reference
        self.other = other
        self.other_outputs: list[np.ndarray] = []

    def embed(self, chips: np.ndarray, flip_average: bool = False) -> np.ndarray:
        self.other_outputs.append(self.other.embed(chips, flip_average))
        return self.reference.embed(chips, flip_average)


def decide(distances: np.ndarray, match: float, unknown: float) -> np.ndarray:
    """MATCH, UNCERTAIN or UNKNOWN for each distance (NaN or inf: UNKNOWN)."""
    out = np.full(len(distances), UNKNOWN, np.int8)
    out[distances <= unknown] = UNCERTAIN
    out[distances <= match] = MATCH
    return out


def flip_row(
    mode: str,
    name: str,
    before: np.ndarray,
    after: np.ndarray,
    thresholds: tuple[float, float],
    same_identity: np.ndarray | None = None,
) -> dict[str, object]:
    """Counts of changed decisions between the distances ``before`` (fp32) and ``after``."""
    a, b = decide(before, *thresholds), decide(after, *thresholds)
    changed = a != b
    other_identity = 0
    if same_identity is not None:  # both matches, naming different people
        other_identity = int(((a == MATCH) & (b == MATCH) & ~same_identity).sum())
    flips = int(changed.sum()) + other_identity
    finite = np.isfinite(before) & np.isfinite(after)
    change = np.abs(after[finite] - before[finite])
    return {
        "mode": mode,
        "eval": name,
        "decisions": len(before),
        "flips": flips,
        "flip_pct": f"{100.0 * flips / max(1, len(before)):.3f}",
        "to_match": int((changed & (b == MATCH)).sum()),
        "to_uncertain": int((changed & (b == UNCERTAIN)).sum()),
        "to_unknown": int((changed & (b == UNKNOWN)).sum()),
        "other_identity": other_identity,
        "max_abs_change": f"{change.max():.5f}" if len(change) else "-",
        "p99_abs_change": f"{np.quantile(change, 0.99):.5f}" if len(change) else "-",
    }


def with_precisions(settings: Settings, embedder: str, detector: str) -> Settings:
    """A copy of ``settings`` with the embedder's and both CNN detectors' precisions set."""
    copy = settings.model_copy(deep=True)
    copy.embedder.precision = embedder  # type: ignore[assignment]
    copy.detector.retinaface_precision = detector  # type: ignore[assignment]
    copy.detector.mmod_precision = detector  # type: ignore[assignment]
    return copy


def embed_tree(settings: Settings, paths: list[Path], other: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings of ``paths`` (dataset defaults: centre face, flip-averaged); with ``other``, also
    those of an embedder at that precision on the same chips."""
    recognizer = FaceRecognizer(settings)
    tee = None
    if other is not None:
        tee = TeeEmbedder(
            recognizer.embedder,
            FaceEmbedder.from_config(settings.embedder.model_copy(update={"precision": other}), settings.models.dir),
        )
        recognizer.__dict__["embedder"] = tee  # the cached_property's slot: the dataset code embeds through it
    result = DatasetEmbedder(recognizer).embed(paths, description=f"LFW ({settings.embedder.precision})")
    if tee is None:
        return result.embeddings, None
    second = np.full_like(result.embeddings, np.nan)
    embedded = ~np.isnan(result.embeddings).any(axis=1)
    second[embedded] = np.concatenate(tee.other_outputs)
    return result.embeddings, second


def measure(
    vectors: dict[str, np.ndarray], paths: list[Path], lfw: Path, thresholds: tuple[float, float]
) -> list[dict[str, object]]:
    """Flip rows for each non-reference mode of ``vectors`` (its 'fp32' entry is the reference)."""
    row = {path: index for index, path in enumerate(paths)}
    pairs = read_pairs(lfw / "pairs.txt", lfw / "images")
    pa, pb = [row[p.a] for p in pairs], [row[p.b] for p in pairs]
    split = split_open_set(list_identities(lfw))
    gallery = [row[p] for p in split.gallery]
    probes = [row[p] for p in split.mated + split.non_mated]

    def pair_distances(v: np.ndarray) -> np.ndarray:
        return np.linalg.norm(v[pa] - v[pb], axis=1)

    def nearest(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return nearest_gallery(v[probes], v[gallery])

    reference = vectors["fp32"]
    ref_pairs = pair_distances(reference)
    ref_index, ref_distance = nearest(reference)
    rows = []
    for mode, v in vectors.items():
        if mode == "fp32":
            continue
        rows.append(flip_row(mode, f"LFW pairs ({len(pairs)})", ref_pairs, pair_distances(v), thresholds))
        index, distance = nearest(v)
        rows.append(
            flip_row(
                mode,
                f"open set ({len(split.mated)} mated + {len(split.non_mated)} non-mated)",
                ref_distance,
                distance,
                thresholds,
                same_identity=index == ref_index,
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="LFW folder (images/ and pairs.txt)")
    parser.add_argument("--precision", default="bf16", help="the precision compared with fp32 (default bf16)")
    parser.add_argument("--end-to-end", action="store_true", help="also run the detector at --precision")
    parser.add_argument("--save", type=Path, help="write the embeddings here (.npz) for later analysis")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    args = parser.parse_args()
    settings = load_settings()
    thresholds = (settings.watchlist.match_distance, settings.watchlist.unknown_threshold)
    identities = list_identities(args.dataset)
    paths = [path for images in identities.values() for path in images]
    reference, same_chips = embed_tree(with_precisions(settings, "fp32", "fp32"), paths, args.precision)
    assert same_chips is not None
    vectors = {"fp32": reference, f"embedder {args.precision}": same_chips}
    if args.end_to_end:
        vectors[f"all {args.precision}"] = embed_tree(
            with_precisions(settings, args.precision, args.precision), paths, None
        )[0]
    if args.save:
        np.savez(args.save, **{mode.replace(" ", "_"): v for mode, v in vectors.items()})
    rows = measure(vectors, paths, args.dataset, thresholds)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(f"thresholds: match <= {thresholds[0]:g}, uncertain <= {thresholds[1]:g}, else unknown")
        print(format_table(rows, COLUMNS))
    print(Path("/proc/loadavg").read_text().strip(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
