"""Identification: embeddings -> match, uncertain or unknown against the watchlist.

For each face the index returns its ``top_k`` nearest templates; the nearest template of each
identity stands for that identity. With ``d1`` the best identity's distance and ``d2`` the
runner-up identity's (inf when there is none among the top k):

- ``match``: ``d1 <= match_threshold`` and ``d2 - d1 >= ambiguity_margin``;
- ``unknown``: ``d1 > unknown_threshold`` (or an empty watchlist);
- ``uncertain``: anything else (close to someone, but not safely that one person).

``score`` = clip(1 - d1² / 4, 0, 1): a similarity in [0, 1], 1 for identical vectors, 0.94 at the
default match threshold 0.5, 0.91 at dlib's pair threshold 0.6, 0 at distance 2 and beyond. It
squeezes the whole decision band into 0.91..0.94; ``confidence`` is what the distance means:
(1 - FMR(d1))^N with FMR measured on LFW and N the enrolled identities (worker/calibration.py),
for dlib's ResNet; a trained ``embedder.model`` has no such table and its confidence is None.
Every answer also says the ``threshold`` (the match distance) it was decided against.

With ``watchlist.classifier: svm`` (worker/watchlist/svm.py), OpenFace's linear SVM chooses among
the identities of the ``top_k`` templates instead of the nearest one, and the distances keep the
open-set boundary:

- ``unknown``: ``d1 > unknown_threshold`` (or an empty watchlist), as above;
- ``match``: the SVM's most probable candidate has probability at least ``svm_min_probability``
  and its own nearest template within ``match_threshold`` (allowing it up to ``unknown_threshold``
  named half again as many strangers on LFW for 0.2% more of the people enrolled);
- ``uncertain``: anything else.

``distance`` and ``score`` are then those of the SVM's candidate, and ``confidence`` is its
class probability (Platt-scaled, coupled among the candidates).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from worker.calibration import FmrTable, shipped_table
from worker.config import WatchlistConfig
from worker.errors import ConfigError
from worker.models.face_spec import MODEL_VERSION
from worker.watchlist.index import WatchlistIndex
from worker.watchlist.store import WatchlistStore
from worker.watchlist.svm import SvmClassifier

MATCH, UNCERTAIN, UNKNOWN = "match", "uncertain", "unknown"


@dataclass(frozen=True)
class Identification:
    """The watchlist's answer for one face; ``identity_id`` and ``name`` are set only for a match."""

    status: str
    identity_id: str | None
    name: str | None
    score: float
    distance: float  # to the nearest template of the best identity (inf if the watchlist is empty)
    candidate_id: str | None  # the best identity, even when it is not a match
    candidate_name: str | None
    runner_up_distance: float
    watchlist_version: int
    # (1 - FMR(distance))^enrolled identities: 0 when there is no candidate, None when the model has no FMR
    # table (a trained embedder.model: the table was measured for dlib's ResNet)
    confidence: float | None = 0.0
    threshold: float = 0.5  # the match distance it was decided against

    @property
    def matched(self) -> bool:
        return self.status == MATCH


def similarity_score(distances: np.ndarray) -> np.ndarray:
    """Distances -> scores in [0, 1], higher = more similar (see the module docstring)."""
    d = np.asarray(distances, np.float64)
    return np.clip(1.0 - np.where(np.isfinite(d), d, 2.0) ** 2 / 4.0, 0.0, 1.0)


def fmr_table_for(model_version: str | None) -> FmrTable | None:
    """The false-match table of a model: the shipped one, measured for dlib's ResNet; None for another model."""
    return shipped_table() if model_version in (None, MODEL_VERSION) else None


class Identifier:
    """Identifies batches of embeddings with the index; names come from the store, cached."""

    def __init__(
        self,
        store: WatchlistStore,
        index: WatchlistIndex,
        match_threshold: float = 0.5,
        unknown_threshold: float = 0.6,
        top_k: int = 10,
        ambiguity_margin: float = 0.05,
    ) -> None:
        if unknown_threshold < match_threshold:
            raise ConfigError(
                f"watchlist.unknown_threshold ({unknown_threshold}) must be at least "
                f"watchlist.match_threshold ({match_threshold})"
            )
        self.store = store
        self.index = index
        self.match_threshold = match_threshold
        self.unknown_threshold = unknown_threshold
        self.top_k = top_k
        self.ambiguity_margin = ambiguity_margin
        # Swapped whole by the watchlist's owner after each retraining; read once per batch.
        self.classifier: SvmClassifier | None = None
        self.svm_min_probability = 0.3
        self._names: dict[str, str] = {}
        self._names_version = -1
        self._names_lock = threading.Lock()

    @classmethod
    def from_config(cls, store: WatchlistStore, index: WatchlistIndex, config: WatchlistConfig) -> Identifier:
        """The identifier with the thresholds (and the index's search threads) of the ``watchlist`` section."""
        index.search_threads = config.search_threads
        identifier = cls(
            store,
            index,
            match_threshold=config.match_distance,
            unknown_threshold=config.unknown_threshold,
            top_k=config.top_k,
            ambiguity_margin=config.ambiguity_margin,
        )
        identifier.svm_min_probability = config.svm_min_probability
        return identifier

    def _lookup(self, identity_ids: set[str], version: int) -> dict[str, str]:
        with self._names_lock:
            if version != self._names_version:
                # The store changed (maybe a removal): start the cache afresh.
                self._names.clear()
                self._names_version = version
            missing = identity_ids - self._names.keys()
            if missing:
                self._names.update(self.store.names(missing))
            return {i: self._names[i] for i in identity_ids if i in self._names}

    def identify(self, embeddings: np.ndarray) -> list[Identification]:
        """One Identification per row of ``embeddings`` (N, 128)."""
        version = self.index.version
        distances, _, identities = self.index.search(embeddings, self.top_k)
        n = len(distances)
        if n == 0:
            return []
        best_id = identities[:, 0]
        best_d = distances[:, 0].astype(np.float64)
        is_unknown = ~np.isfinite(best_d) | (best_d > self.unknown_threshold)
        classifier = self.classifier
        table, enrolled = fmr_table_for(self.index.model_version), self.index.identity_count()
        if classifier is None:
            candidate_d = best_d
            with np.errstate(invalid="ignore"):  # inf - inf when nothing was found: not a match either way
                is_match = (best_d <= self.match_threshold) & (
                    self._runner_up(identities, distances, best_id) - best_d >= self.ambiguity_margin
                )
            confidences = np.array(
                [table.confidence(float(d), enrolled) if table is not None and np.isfinite(d) else 0.0 for d in best_d]
            )
        else:
            probabilities = classifier.probabilities_among(embeddings, classifier.class_positions(identities))
            place = probabilities.argmax(axis=1)
            rows = np.arange(n)
            has_class = probabilities.sum(axis=1) > 0
            # Without a trained class among the candidates (enrolled after the last training), nobody is named.
            best_id = np.where(has_class, identities[rows, place], None)
            candidate_d = np.where(has_class, distances[rows, place], np.inf).astype(np.float64)
            confidences = np.where(has_class, probabilities[rows, place], 0.0)
            is_match = has_class & (confidences >= self.svm_min_probability) & (candidate_d <= self.match_threshold)
        calibrated = classifier is not None or table is not None  # the SVM's probabilities are its own
        runner_d = self._runner_up(identities, distances, best_id)
        best_d, threshold = candidate_d, self.match_threshold
        scores = similarity_score(best_d)
        # Keyed on the store's version (one cheap read), so a removal empties the cache even before
        # the index has synced, and a stale hit on a removed person finds no name and is dropped.
        names = self._lookup({i for i in best_id if i is not None}, self.store.version)
        results = []
        for row in range(n):
            candidate = best_id[row]
            name = names.get(candidate) if candidate is not None else None
            if candidate is not None and name is None:
                # Removed from the store after the index answered: erasure wins.
                candidate = None
            status = UNKNOWN if is_unknown[row] or candidate is None else MATCH if is_match[row] else UNCERTAIN
            results.append(
                Identification(
                    status=status,
                    identity_id=candidate if status == MATCH else None,
                    name=name if status == MATCH else None,
                    score=float(scores[row]) if candidate is not None else 0.0,
                    distance=float(best_d[row]) if candidate is not None else math.inf,
                    candidate_id=candidate,
                    candidate_name=name if candidate is not None else None,
                    runner_up_distance=float(runner_d[row]),
                    watchlist_version=version,
                    confidence=(float(confidences[row]) if calibrated else None) if candidate is not None else 0.0,
                    threshold=threshold,
                )
            )
        return results

    def fragile(self, results: list[Identification], band: float) -> np.ndarray:
        """Per answer, True where moving every distance by up to ``band`` could change the decision.

        That is: the best distance within ``band`` of either threshold; or a possible match whose gap to
        the runner-up (which moves by up to twice ``band``) is that close to ``ambiguity_margin``: the
        gap decides match or uncertain there, and a swap of the two needs a gap under twice ``band``,
        which is inside that window whenever a match was possible at all. With the SVM, any answer that
        is not safely unknown (its probabilities move with the descriptor in ways no distance bound
        covers). Outside these rows a lowered precision's decisions are fp32's, given that the two
        differ by less than ``band`` in distance; an uncertain answer's candidate (which no decision
        reads, only `facewatch annotate`'s label) may still be the runner-up's.
        """
        if not results:
            return np.zeros(0, bool)
        d = np.array([r.distance for r in results], np.float64)
        runner = np.array([r.runner_up_distance for r in results], np.float64)
        if self.classifier is not None:
            nearest = np.minimum(d, runner)  # the SVM's candidate need not be the nearest identity
            return np.isfinite(nearest) & (nearest <= self.unknown_threshold + band)
        with np.errstate(invalid="ignore"):
            near_threshold = (np.abs(d - self.match_threshold) <= band) | (np.abs(d - self.unknown_threshold) <= band)
            could_match = d <= self.match_threshold + band
            close_runner = np.abs(runner - d - self.ambiguity_margin) <= 2 * band
        return np.isfinite(d) & (near_threshold | (could_match & close_runner))

    @staticmethod
    def _runner_up(identities: np.ndarray, distances: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """Per row, the distance of the nearest identity other than the chosen one (inf: none)."""
        # Results are sorted by distance, so the first column holding another identity is the runner-up.
        other = (identities != chosen[:, None]) & np.not_equal(identities, None)
        has_other = other.any(axis=1)
        rows = np.arange(len(identities))
        return np.where(has_other, distances[rows, other.argmax(axis=1)], np.inf).astype(np.float64)
