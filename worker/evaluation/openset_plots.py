"""Pictures of an open-set evaluation: the DET curve and the two distance distributions.

DET (detection error tradeoff), as NIST FRTE 1:N draws it: FNIR (mated searches that miss) against
FPIR (stranger searches that raise an alarm), both on log axes, one point per threshold; lower left
is better. The histograms show what the thresholds cut: same-person distances (each mated probe to
its own enrolled photo) and strangers' distances (each non-mated probe to its nearest enrolled
person). Chosen thresholds are marked on both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import numpy as np

from worker.evaluation.openset import OpenSetDistances, det_curve, fpir_at, tpir_at

_COLOURS = ("tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    return plt


def plot_det(distances: OpenSetDistances, marks: Mapping[str, float], path: str | Path, title: str) -> None:
    """Save the DET curve (FNIR vs FPIR, log axes) with a point at each marked threshold."""
    plt = _pyplot()
    _, fpir, fnir = det_curve(distances)
    # A log axis cannot show 0: rates of 0 are drawn at half of the smallest non-zero rate they could be.
    floor_fpir = 0.5 / len(distances.non_mated)
    floor_fnir = 0.5 / len(distances.mated)
    figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
    axes.plot(np.maximum(fpir, floor_fpir), np.maximum(fnir, floor_fnir), drawstyle="steps-post", label="facewatch")
    for colour, (label, threshold) in zip(_COLOURS, marks.items(), strict=False):
        x = fpir_at(distances.non_mated, threshold)
        y = 1.0 - tpir_at(distances.correct, distances.mated, threshold)
        axes.plot(
            max(x, floor_fpir),
            max(y, floor_fnir),
            "o",
            color=colour,
            label=f"{label}: d <= {threshold:.3f} (FPIR {x:.4f}, FNIR {y:.4f})",
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(floor_fpir, 1.0)
    # Down to the decade under the lowest miss rate reached: a good model's curve fills the picture.
    lowest = float(np.min(fnir[fnir > 0], initial=1.0)) if len(fnir) else 1.0
    axes.set_ylim(max(floor_fnir, 10.0 ** np.floor(np.log10(lowest))), 1.0)
    axes.set_xlabel("FPIR (strangers who raise an alarm)")
    axes.set_ylabel("FNIR (enrolled people missed)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower left", fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_distance_histograms(
    distances: OpenSetDistances, marks: Mapping[str, float], path: str | Path, title: str
) -> None:
    """Save the same-person and stranger distance histograms, the marked thresholds as vertical lines."""
    plt = _pyplot()
    same = distances.same_person[np.isfinite(distances.same_person)]
    strangers = distances.non_mated[np.isfinite(distances.non_mated)]
    both = np.concatenate([same, strangers, list(marks.values())])
    bins = np.linspace(0.0, max(1.0, float(both.max()) * 1.05), 61)
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.hist(same, bins=bins, density=True, alpha=0.55, label=f"same person ({len(same)})", color="tab:blue")
    axes.hist(
        strangers, bins=bins, density=True, alpha=0.55, label=f"stranger to nearest ({len(strangers)})", color="grey"
    )
    for colour, (label, threshold) in zip(_COLOURS, marks.items(), strict=False):
        axes.axvline(threshold, color=colour, linestyle="--", label=f"{label}: {threshold:.3f}")
    axes.set_xlabel("embedding distance")
    axes.set_ylabel("density")
    axes.set_title(title)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
