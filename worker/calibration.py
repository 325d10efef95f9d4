"""Calibrated match confidence: what a distance means, from false-match rates measured on LFW.

A distance alone says little (0.50 and 0.55 are both "close"). The shipped table
(worker/data/fmr_lfw.json, made by scripts/measure_fmr.py; docs/accuracy.md) gives, for
distances 0.20..0.80, the measured 1:1 false-match rate FMR(d): the share of different-person pairs
at distance d or closer. Between the grid points log10 FMR is interpolated linearly, so FMR rises
monotonically with the distance; where no false match was measured the rate is taken as half a pair
in all those measured (the table cannot promise less).

``confidence(d, n)`` = (1 - FMR(d))^n: the chance that a stranger's face would *not* come this close
to any of ``n`` enrolled identities, i.e. one minus the expected false-positive identification rate
at that distance for a list of that size (FPIR ≈ 1 - (1 - FMR)^N, docs/accuracy.md). It falls as
the distance grows and as the list grows, which is what the same distance means.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

TABLE_PATH = Path(__file__).parent / "data" / "fmr_lfw.json"


@dataclass(frozen=True)
class FmrTable:
    """Measured FMR by distance (increasing grid), and the least rate it can vouch for."""

    distances: np.ndarray
    log_fmr: np.ndarray  # log10 of the measured FMR, floored where none was measured
    floor: float

    @classmethod
    def load(cls, path: Path = TABLE_PATH) -> FmrTable:
        """The table in ``path`` (JSON: distance, false_matches, different_person_pairs)."""
        data = json.loads(Path(path).read_text())
        distances = np.asarray(data["distance"], np.float64)
        counts = np.asarray(data["false_matches"], np.float64)
        pairs = float(data["different_person_pairs"])
        if len(distances) < 2 or np.any(np.diff(distances) <= 0) or np.any(np.diff(counts) < 0):
            raise ValueError(f"{path}: distances must increase and false-match counts must not decrease")
        floor = 0.5 / pairs
        return cls(distances, np.log10(np.maximum(counts / pairs, floor)), floor)

    def fmr(self, distance: float) -> float:
        """The false-match rate at ``distance`` (monotone in the distance; 1 for infinity)."""
        if not math.isfinite(distance):
            return 1.0
        return float(min(1.0, 10 ** np.interp(distance, self.distances, self.log_fmr)))

    def distance_at(self, fmr: float) -> float:
        """The largest distance whose FMR is at most ``fmr`` (ValueError outside what the table measured)."""
        low, high = 10 ** self.log_fmr[0], 10 ** self.log_fmr[-1]
        if not low <= fmr <= high:
            raise ValueError(f"a false-match rate of {fmr:g} is outside the measured {low:.2g}..{high:.2g}")
        target = math.log10(fmr)
        last = int(np.searchsorted(self.log_fmr, target, side="right")) - 1  # last grid point at or under it
        if last >= len(self.distances) - 1 or self.log_fmr[last] == target:
            return float(self.distances[last])
        d0, d1 = self.distances[last], self.distances[last + 1]
        f0, f1 = self.log_fmr[last], self.log_fmr[last + 1]
        return float(d0 + (d1 - d0) * (target - f0) / (f1 - f0))

    def confidence(self, distance: float, enrolled: int) -> float:
        """(1 - FMR(distance))^enrolled, in [0, 1] (see the module docstring)."""
        return float((1.0 - self.fmr(distance)) ** max(1, enrolled))


@lru_cache(maxsize=1)
def shipped_table() -> FmrTable:
    """The table that ships with facewatch (read once)."""
    return FmrTable.load()
