"""Decision flips of bf16 against fp32 on LFW: verification pairs and open-set identification.

    PYTHONPATH=. .venv/bin/python scripts/precision_flips.py --dataset ../shared/data/lfw [--end-to-end]

Every image of the LFW tree is detected and aligned once, with the default settings in fp32; each
chunk of chips is then embedded twice, by the fp32 embedder and by the bf16 one ("embedder bf16":
the same chips, so only the network's arithmetic differs). With --end-to-end the tree is also run
with the detector in bf16 as well (boxes and landmarks move too: "all bf16"; about as long again).

Decisions by the watchlist's default rules (watchlist.match_threshold, unknown_threshold,
ambiguity_margin), as worker/watchlist/identify.py makes them: match when the nearest identity is
within the match threshold and the runner-up identity at least the margin further; uncertain within
the unknown threshold; else unknown. LFW: the pairs of pairs.txt (View 2; no runner-up). Open set:
`facewatch eval identify`'s split (first image of each multi-image person enrolled, the rest mated
probes, single-image people non-mated probes); a match that names another identity counts as a flip
too. Prints one table row per (mode, eval).

Two more modes follow `embedder.precision: auto`, the worker's default on such a CPU: templates
(the gallery, and the first image of each pair) stay fp32 and only the probe is bf16 ("search
bf16"); "search bf16 + check" then takes the fp32 probe wherever the bf16 decision is fragile as
worker/watchlist/identify.py defines it (within embedder.recheck_band of a threshold, or a possible
match whose gap to the runner-up is within twice the band of the margin), as the streaming worker
does (worker/stream/search.py); its row says what fraction of the probes were embedded again.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.bench.timing import format_table
from worker.config import Settings, load_settings
from worker.embed.embedder import FaceEmbedder
from worker.evaluation.dataset import DatasetEmbedder
from worker.evaluation.lfw import read_pairs
from worker.evaluation.openset import list_identities, split_open_set
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
    ("rechecked_pct", "rechecked %"),
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


Rules = tuple[float, float, float]  # match threshold, unknown threshold, ambiguity margin


@dataclass
class Answers:
    """Per probe: the nearest identity's distance and index (None for pairs), and the runner-up's distance."""

    distance: np.ndarray
    runner_up: np.ndarray
    index: np.ndarray | None = None

    def where(self, mask: np.ndarray, other: Answers) -> Answers:
        """``other``'s answer where ``mask`` is set, this one's elsewhere."""
        index = None if self.index is None or other.index is None else np.where(mask, other.index, self.index)
        return Answers(
            np.where(mask, other.distance, self.distance), np.where(mask, other.runner_up, self.runner_up), index
        )


def decide(answers: Answers, rules: Rules) -> np.ndarray:
    """MATCH, UNCERTAIN or UNKNOWN per answer, as worker/watchlist/identify.py decides (NaN or inf: UNKNOWN)."""
    match, unknown, margin = rules
    d = answers.distance
    out = np.full(len(d), UNKNOWN, np.int8)
    with np.errstate(invalid="ignore"):
        out[d <= unknown] = UNCERTAIN
        out[(d <= match) & (answers.runner_up - d >= margin)] = MATCH
    return out


def fragile(answers: Answers, rules: Rules, band: float) -> np.ndarray:
    """Identifier.fragile: the answers a distance change of up to ``band`` could change."""
    match, unknown, margin = rules
    d, runner = answers.distance, answers.runner_up
    with np.errstate(invalid="ignore"):
        near = (np.abs(d - match) <= band) | (np.abs(d - unknown) <= band)
        gap = (d <= match + band) & (np.abs(runner - d - margin) <= 2 * band)
    return np.isfinite(d) & (near | gap)


def flip_row(mode: str, name: str, before: Answers, after: Answers, rules: Rules) -> dict[str, object]:
    """Counts of changed decisions between the answers ``before`` (fp32) and ``after``."""
    a, b = decide(before, rules), decide(after, rules)
    changed = a != b
    other_identity = 0
    if before.index is not None and after.index is not None:  # both matches, naming different people
        other_identity = int(((a == MATCH) & (b == MATCH) & (before.index != after.index)).sum())
    flips = int(changed.sum()) + other_identity
    finite = np.isfinite(before.distance) & np.isfinite(after.distance)
    change = np.abs(after.distance[finite] - before.distance[finite])
    return {
        "mode": mode,
        "eval": name,
        "decisions": len(before.distance),
        "flips": flips,
        "flip_pct": f"{100.0 * flips / max(1, len(before.distance)):.3f}",
        "to_match": int((changed & (b == MATCH)).sum()),
        "to_uncertain": int((changed & (b == UNCERTAIN)).sum()),
        "to_unknown": int((changed & (b == UNKNOWN)).sum()),
        "other_identity": other_identity,
        "max_abs_change": f"{change.max():.5f}" if len(change) else "-",
        "p99_abs_change": f"{np.quantile(change, 0.99):.5f}" if len(change) else "-",
    }


def nearest_two(probes: np.ndarray, gallery: np.ndarray) -> Answers:
    """Each probe's nearest gallery row (index, distance) and the second nearest's distance (NaN rows: NaN)."""
    g = gallery.astype(np.float64)
    usable = ~np.isnan(g).any(axis=1)
    g_rows = np.flatnonzero(usable)
    g = g[usable]
    g_norms = (g**2).sum(axis=1)
    index = np.zeros(len(probes), np.int64)
    first, second = np.full(len(probes), np.nan), np.full(len(probes), np.nan)
    for start in range(0, len(probes), 1024):
        part = probes[start : start + 1024].astype(np.float64)
        squared = (part**2).sum(axis=1)[:, None] + g_norms[None, :] - 2 * part @ g.T
        d = np.sqrt(np.maximum(squared, 0))
        order = np.argsort(d, axis=1)[:, :2]
        rows = np.arange(len(part))
        chunk = slice(start, start + len(part))
        index[chunk] = g_rows[order[:, 0]]
        first[chunk] = d[rows, order[:, 0]]
        second[chunk] = d[rows, order[:, 1]] if d.shape[1] > 1 else np.inf
    return Answers(first, second, index)


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
    vectors: dict[str, np.ndarray],
    paths: list[Path],
    lfw: Path,
    rules: Rules,
    search: str | None = None,
    band: float = 0.01,
) -> list[dict[str, object]]:
    """Flip rows for each non-reference mode of ``vectors`` (its 'fp32' entry is the reference)."""
    row = {path: index for index, path in enumerate(paths)}
    pairs = read_pairs(lfw / "pairs.txt", lfw / "images")
    pa, pb = [row[p.a] for p in pairs], [row[p.b] for p in pairs]
    split = split_open_set(list_identities(lfw))
    gallery = [row[p] for p in split.gallery]
    probes = [row[p] for p in split.mated + split.non_mated]
    pairs_name = f"LFW pairs ({len(pairs)})"
    open_name = f"open set ({len(split.mated)} mated + {len(split.non_mated)} non-mated)"

    def pair_answers(templates: np.ndarray, probe: np.ndarray) -> Answers:
        distance = np.linalg.norm(templates[pa] - probe[pb], axis=1)
        return Answers(distance, np.full(len(distance), np.inf))

    reference = vectors["fp32"]
    ref_pairs = pair_answers(reference, reference)
    ref_open = nearest_two(reference[probes], reference[gallery])
    rows = []
    for mode, v in vectors.items():
        if mode != "fp32":
            rows.append(flip_row(mode, pairs_name, ref_pairs, pair_answers(v, v), rules))
            rows.append(flip_row(mode, open_name, ref_open, nearest_two(v[probes], v[gallery]), rules))
    if search is None:
        return rows
    # auto: fp32 templates, lowered probes, fp32 again for the fragile ones.
    low = vectors[search]
    for name, ref, lowered in (
        (pairs_name, ref_pairs, pair_answers(reference, low)),
        (open_name, ref_open, nearest_two(low[probes], reference[gallery])),
    ):
        checked = fragile(lowered, rules, band)
        rows.append({**flip_row("search bf16", name, ref, lowered, rules), "rechecked_pct": "-"})
        row = flip_row("search bf16 + check", name, ref, lowered.where(checked, ref), rules)
        rows.append({**row, "rechecked_pct": f"{100 * checked.mean():.2f}"})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="LFW folder (images/ and pairs.txt)")
    parser.add_argument("--precision", default="bf16", help="the precision compared with fp32 (default bf16)")
    parser.add_argument("--end-to-end", action="store_true", help="also run the detector at --precision")
    parser.add_argument("--band", type=float, default=None, help="recheck band (default: embedder.recheck_band)")
    parser.add_argument("--save", type=Path, help="write the embeddings here (.npz) for later analysis")
    parser.add_argument("--load", type=Path, help="analyse the embeddings a --save run wrote instead of embedding")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    args = parser.parse_args()
    settings = load_settings()
    w = settings.watchlist
    rules = (w.match_distance, w.unknown_threshold, w.ambiguity_margin)
    identities = list_identities(args.dataset)
    paths = [path for images in identities.values() for path in images]
    if args.load:
        with np.load(args.load) as saved:
            vectors = {key.replace("_", " "): saved[key] for key in saved.files}
    else:
        reference, same_chips = embed_tree(with_precisions(settings, "fp32", "fp32"), paths, args.precision)
        assert same_chips is not None
        vectors = {"fp32": reference, f"embedder {args.precision}": same_chips}
    if args.end_to_end and not args.load:
        vectors[f"all {args.precision}"] = embed_tree(
            with_precisions(settings, args.precision, args.precision), paths, None
        )[0]
    if args.save and not args.load:
        np.savez(args.save, **{mode.replace(" ", "_"): v for mode, v in vectors.items()})
    band = settings.embedder.recheck_band if args.band is None else args.band
    rows = measure(vectors, paths, args.dataset, rules, f"embedder {args.precision}", band)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(
            f"rules: match <= {rules[0]:g} with the runner-up identity >= {rules[2]:g} further, uncertain <= "
            f"{rules[1]:g}, else unknown; recheck band {band:g}"
        )
        print(format_table(rows, COLUMNS))
    print(Path("/proc/loadavg").read_text().strip(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
