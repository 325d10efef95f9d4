"""The shipped FMR table: monotone confidences, thresholds by false-match rate, and the config that uses them."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from worker.calibration import TABLE_PATH, FmrTable, shipped_table
from worker.config import ConfigError, load_settings


def test_the_shipped_table_is_a_measurement_and_fmr_rises_with_distance():
    table = FmrTable.load(TABLE_PATH)
    assert table.distances[0] <= 0.3 and table.distances[-1] >= 0.7
    rates = [table.fmr(d) for d in np.linspace(0.0, 1.2, 241)]
    assert all(b >= a for a, b in itertools.pairwise(rates))
    # docs/accuracy.md's anchors: 0.5 falsely matches 3.6e-4 of stranger comparisons, 0.6 about 8.5e-3.
    assert table.fmr(0.5) == pytest.approx(3.6e-4, rel=0.05) and table.fmr(0.6) == pytest.approx(8.5e-3, rel=0.05)
    assert table.fmr(math.inf) == 1.0


def test_confidence_falls_with_distance_and_with_the_size_of_the_list():
    table = shipped_table()
    near, far = table.confidence(0.45, 100), table.confidence(0.6, 100)
    assert 1.0 >= near > table.confidence(0.5, 100) > table.confidence(0.55, 100) > far >= 0.0
    # What the decision band means: the 1 - d^2/4 score put 0.5 and 0.6 at 0.94 and 0.91.
    assert near > 0.99 and far < 0.5
    assert table.confidence(0.5, 1000) < table.confidence(0.5, 10)
    assert table.confidence(math.inf, 1) == 0.0


def test_a_false_match_rate_resolves_to_the_distance_with_that_rate():
    table = shipped_table()
    for rate in (1e-5, 1e-4, 3.6e-4, 1e-3, 1e-2):
        assert table.fmr(table.distance_at(rate)) == pytest.approx(rate, rel=1e-6)
    assert 0.45 < table.distance_at(1e-4) < 0.48  # docs/accuracy.md: 1e-4 at 0.465
    with pytest.raises(ValueError, match="outside the measured"):
        table.distance_at(1e-12)


def test_config_takes_a_threshold_by_rate_or_by_distance_not_both():
    settings = load_settings(overrides={"watchlist": {"match_fmr": 1e-4}})
    assert settings.watchlist.match_distance == pytest.approx(shipped_table().distance_at(1e-4))
    assert load_settings().watchlist.match_distance == 0.5
    with pytest.raises(ConfigError, match="set match_threshold or match_fmr, not both"):
        load_settings(overrides={"watchlist": {"match_fmr": 1e-4, "match_threshold": 0.45}})
    with pytest.raises(ConfigError, match=r"watchlist\.match_fmr: Input should be greater than or equal to"):
        load_settings(overrides={"watchlist": {"match_fmr": 1e-12}})  # below what the table can vouch for
    with pytest.raises(ConfigError, match="unknown_threshold"):
        load_settings(overrides={"watchlist": {"match_fmr": 0.05, "unknown_threshold": 0.6}})
