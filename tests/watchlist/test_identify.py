"""Identification rules: match, uncertain, unknown, ambiguity margin, scores, erasure from caches."""

from __future__ import annotations

import math

import numpy as np
import pytest

from worker.errors import ConfigError
from worker.watchlist.identify import Identifier, similarity_score
from worker.watchlist.index import WatchlistIndex
from worker.watchlist.store import WatchlistStore

BASIS = np.linalg.qr(np.random.default_rng(3).normal(size=(128, 128)))[0].T.astype(np.float32)  # orthonormal rows


def at_distance(d: float, direction: int) -> np.ndarray:
    """A unit vector at Euclidean distance ``d`` from BASIS[0], leaning towards BASIS[direction]."""
    angle = 2 * math.asin(d / 2)
    return (BASIS[0] * math.cos(angle) + BASIS[direction] * math.sin(angle)).astype(np.float32)


@pytest.fixture
def store(tmp_path):
    with WatchlistStore(tmp_path / "w.db") as s:
        yield s


def enroll(store: WatchlistStore, name: str, *vectors: np.ndarray) -> str:
    person = store.add_identity(name)
    store.add_templates(person.id, np.stack(vectors))
    return person.id


def identify(store: WatchlistStore, query: np.ndarray, **rules) -> list:
    index = WatchlistIndex.build(store, "exact")
    return Identifier(store, index, **rules).identify(np.atleast_2d(query))


def test_match_uncertain_unknown_by_distance(store):
    ada = enroll(store, "Ada", at_distance(0.5, 1), at_distance(0.9, 2))
    enroll(store, "Bob", at_distance(1.2, 3))
    queries = np.stack([at_distance(0.0, 1), BASIS[0]])
    results = identify(store, queries)
    assert results[0].status == "match" and results[0].identity_id == ada and results[0].name == "Ada"
    assert results[0].distance == pytest.approx(0.5, abs=1e-4)  # nearest of Ada's two templates
    assert results[0].runner_up_distance == pytest.approx(1.2, abs=1e-4)
    assert results[0].score == pytest.approx(1 - 0.25 / 4, abs=1e-4)
    for match, unknown, status in ((0.45, 0.6, "uncertain"), (0.4, 0.45, "unknown")):
        (result,) = identify(store, BASIS[0], match_threshold=match, unknown_threshold=unknown)
        assert result.status == status and result.identity_id is None and result.name is None
        assert result.candidate_id == ada and result.candidate_name == "Ada"
        assert result.distance == pytest.approx(0.5, abs=1e-4)


def test_ambiguity_margin_between_two_close_identities(store):
    enroll(store, "Twin A", at_distance(0.40, 1))
    twin_b = enroll(store, "Twin B", at_distance(0.43, 2))
    (result,) = identify(store, BASIS[0], ambiguity_margin=0.05)
    assert result.status == "uncertain" and result.candidate_name == "Twin A"
    assert result.runner_up_distance == pytest.approx(0.43, abs=1e-4)
    (result,) = identify(store, BASIS[0], ambiguity_margin=0.02)
    assert result.status == "match" and result.name == "Twin A"
    # Several templates of the same identity are not a runner-up.
    store.remove_identity(twin_b)
    person = store.list_identities()[0].id
    store.add_templates(person, np.stack([at_distance(0.41, 3)]))
    (result,) = identify(store, BASIS[0], ambiguity_margin=0.05)
    assert result.status == "match" and math.isinf(result.runner_up_distance)


def test_empty_watchlist_is_unknown(store):
    (result,) = identify(store, BASIS[0])
    assert result.status == "unknown" and result.candidate_id is None and math.isinf(result.distance)
    assert result.score == 0.0
    assert identify(store, np.zeros((0, 128), np.float32)) == []


def test_scores_fall_with_distance():
    scores = similarity_score(np.array([0.0, 0.6, 1.0, 2.0, np.inf]))
    assert scores[0] == 1.0 and scores[-1] == 0.0 and scores[-2] == 0.0
    assert (np.diff(scores) <= 0).all() and scores[1] == pytest.approx(0.91)


def test_unknown_threshold_below_match_threshold_is_a_config_error(store):
    with pytest.raises(ConfigError, match="unknown_threshold"):
        Identifier(store, WatchlistIndex(), match_threshold=0.6, unknown_threshold=0.5)


def test_removed_identity_leaves_results_and_the_name_cache(store):
    ada = enroll(store, "Ada", at_distance(0.2, 1))
    index = WatchlistIndex.build(store, "exact")
    identifier = Identifier(store, index)
    assert identifier.identify(BASIS[:1])[0].name == "Ada"
    assert identifier._names == {ada: "Ada"}
    store.remove_identity(ada)
    # Before the index syncs, the store no longer knows the name: the stale hit is dropped.
    (result,) = identifier.identify(BASIS[:1])
    assert result.status == "unknown" and result.candidate_id is None and result.candidate_name is None
    index.sync(store)
    (result,) = identifier.identify(BASIS[:1])
    assert result.status == "unknown" and result.candidate_id is None
    assert ada not in identifier._names
    assert result.watchlist_version == store.version


def test_every_answer_has_a_calibrated_confidence_and_its_threshold(store):
    from worker.calibration import shipped_table

    enroll(store, "Ada", BASIS[0])
    enroll(store, "Bob", BASIS[5])
    queries = np.stack([at_distance(d, 1) for d in (0.3, 0.5, 0.55, 0.65)])
    results = identify(store, queries, match_threshold=0.52, unknown_threshold=0.6)
    assert [r.status for r in results] == ["match", "match", "uncertain", "unknown"]
    assert {r.threshold for r in results} == {0.52}
    confidences = [r.confidence for r in results]
    assert confidences == sorted(confidences, reverse=True) and confidences[0] > confidences[-1]
    # Two identities enrolled: N = 2 in (1 - FMR(d))^N.
    assert results[1].confidence == pytest.approx((1 - shipped_table().fmr(results[1].distance)) ** 2)


def test_fragile_answers_are_those_a_small_distance_change_could_flip(store):
    """Identifier.fragile marks what a lowered precision must check again in fp32: near either threshold,
    or a possible match whose runner-up is close; nothing else, and nothing on an empty watchlist."""
    enroll(store, "Ada", BASIS[0])
    index = WatchlistIndex.build(store, "exact")
    identifier = Identifier(store, index, match_threshold=0.5, unknown_threshold=0.6, ambiguity_margin=0.05)
    distances = [0.3, 0.495, 0.505, 0.55, 0.595, 0.608, 0.62, 0.9]
    results = identifier.identify(np.stack([at_distance(d, 1) for d in distances]))
    fragile = identifier.fragile(results, 0.01)
    assert fragile.tolist() == [False, True, True, False, True, True, False, False]
    assert identifier.fragile(results, 0.0).tolist() == [False] * len(distances)
    assert identifier.fragile(results, 0.06).tolist() == [False, True, True, True, True, True, True, False]
    # A second person close behind a clear match: a small change could swap them or cross the margin.
    with WatchlistStore(store.path.parent / "pair.db") as pair:
        enroll(pair, "Ada", at_distance(0.30, 1))
        enroll(pair, "Bob", at_distance(0.36, 2))
        identifier = Identifier(pair, WatchlistIndex.build(pair, "exact"), ambiguity_margin=0.05)
        (close,) = identifier.identify(BASIS[:1])
        assert close.status == "match" and close.runner_up_distance - close.distance == pytest.approx(0.06, abs=1e-4)
        assert identifier.fragile([close], 0.01).tolist() == [True]
        assert identifier.fragile([close], 0.001).tolist() == [False]
    # Near-twins: uncertain whichever comes first while the margin holds them apart; with no margin, a swap
    # of the two would name the other person, so they are checked.
    with WatchlistStore(store.path.parent / "twins.db") as twins:
        enroll(twins, "Ada", at_distance(0.300, 1))
        enroll(twins, "Eve", at_distance(0.305, 2))
        for margin, checked in ((0.05, False), (0.0, True)):
            identifier = Identifier(twins, WatchlistIndex.build(twins, "exact"), ambiguity_margin=margin)
            (tie,) = identifier.identify(BASIS[:1])
            assert tie.status == ("uncertain" if margin else "match")
            assert identifier.fragile([tie], 0.01).tolist() == [checked]
    assert identifier.fragile([], 0.01).shape == (0,)
    with WatchlistStore(store.path.parent / "empty.db") as empty:
        nobody = Identifier(empty, WatchlistIndex.build(empty, "exact"))
        assert nobody.fragile(nobody.identify(BASIS[:1]), 0.5).tolist() == [False]


def test_the_flips_script_scores_with_the_identifiers_rules(store):
    """scripts/precision_flips.py re-implements the decision and the recheck rule on arrays (it scores 13,000
    LFW probes at once): on the same answers it must agree with Identifier.identify and Identifier.fragile."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "precision_flips.py"
    spec = importlib.util.spec_from_file_location("precision_flips", path)
    assert spec is not None and spec.loader is not None
    flips = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = flips  # dataclasses look their module up while the class is made
    spec.loader.exec_module(flips)
    enroll(store, "Ada", at_distance(0.30, 1))
    enroll(store, "Bob", at_distance(0.36, 2))
    identifier = Identifier(store, WatchlistIndex.build(store, "exact"), 0.5, 0.6, ambiguity_margin=0.05)
    rng = np.random.default_rng(5)
    queries = np.stack([at_distance(d, 3 + i) for i, d in enumerate(rng.uniform(0.0, 0.9, 60))])
    answers = identifier.identify(queries)
    arrays = flips.Answers(np.array([a.distance for a in answers]), np.array([a.runner_up_distance for a in answers]))
    rules = (0.5, 0.6, 0.05)
    names = {flips.MATCH: "match", flips.UNCERTAIN: "uncertain", flips.UNKNOWN: "unknown"}
    assert [names[d] for d in flips.decide(arrays, rules)] == [a.status for a in answers]
    assert flips.fragile(arrays, rules, 0.02).tolist() == identifier.fragile(answers, 0.02).tolist()
    assert 0 < identifier.fragile(answers, 0.02).sum() < len(answers)
