"""Measure the 1:1 false-match rate (FMR) and true-match rate (TMR) by distance on LFW, and write the
table the worker calibrates match confidences with (worker/data/fmr_lfw.json).

    PYTHONPATH=. .venv/bin/python scripts/measure_fmr.py --dataset ../shared/data/lfw

Embeddings come from worker/evaluation (the default settings, cached under ~/.cache/facewatch like
`facewatch eval identify`). Same-person pairs: every pair of images of one person. Different-person
pairs: every pair of a fixed random sample of images (seed 0) that belong to two people. FMR(t) is
the share of different-person pairs at distance <= t; TMR(t) the share of same-person pairs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from worker.calibration import TABLE_PATH
from worker.config import load_settings
from worker.evaluation.cache import embed_identity_tree

GRID = np.round(np.arange(0.20, 0.8001, 0.01), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="LFW folder (per-person folders)")
    parser.add_argument("--sample", type=int, default=4000, help="images sampled for different-person pairs")
    parser.add_argument("--out", type=Path, default=TABLE_PATH)
    args = parser.parse_args()
    _, labels, result = embed_identity_tree(args.dataset, load_settings(), progress=False)
    vectors = np.asarray(result.embeddings, np.float64)
    ok = np.array([np.isfinite(v).all() for v in vectors])
    names = np.array(labels)
    same: list[np.ndarray] = []
    for name in np.unique(names[ok]):
        rows = vectors[ok & (names == name)]
        if len(rows) > 1:
            d = np.linalg.norm(rows[:, None] - rows[None], axis=2)
            same.append(d[np.triu_indices(len(rows), 1)])
    same_d = np.sort(np.concatenate(same))
    rng = np.random.default_rng(0)
    pick = rng.choice(np.flatnonzero(ok), size=min(args.sample, int(ok.sum())), replace=False)
    sample, who = vectors[pick], names[pick]
    diff_counts = np.zeros(len(GRID), np.int64)
    diff_pairs = 0
    for start in range(0, len(sample), 500):  # rows in blocks: 4,000 x 4,000 distances fit, but need not
        block = sample[start : start + 500]
        d = np.linalg.norm(block[:, None] - sample[None], axis=2)
        index = np.arange(start, start + len(block))[:, None] > np.arange(len(sample))[None]  # each pair once
        keep = index & (who[start : start + 500, None] != who[None])
        values = d[keep]
        diff_pairs += values.size
        diff_counts += np.searchsorted(np.sort(values), GRID, side="right")
    same_counts = np.searchsorted(same_d, GRID, side="right")
    table = {
        "source": "LFW, default settings; scripts/measure_fmr.py",
        "different_person_pairs": int(diff_pairs),
        "same_person_pairs": int(same_d.size),
        "distance": GRID.tolist(),
        "false_matches": diff_counts.tolist(),
        "true_matches": same_counts.tolist(),
    }
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{same_d.size} same-person pairs, {diff_pairs} different-person pairs -> {args.out}")
    print("| distance | FMR (1:1) | TMR (1:1) |\n|---|---|---|")
    for t, f, s in zip(GRID, diff_counts, same_counts, strict=True):
        if round(t * 100) % 5 == 0 or t in (0.41, 0.46, 0.53):
            print(f"| {t:.2f} | {f / diff_pairs:.2g} | {s / same_d.size:.3f} |")


if __name__ == "__main__":
    main()
