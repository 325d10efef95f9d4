"""OpenFace's classifier option: a linear SVM over the watchlist's templates.

Instead of the distance to the nearest template, a linear SVM (one-vs-one, Platt-scaled
probabilities, as scikit-learn's ``SVC(kernel="linear", probability=True)``) is trained on every
template with its identity as the label. A face whose highest class probability is below
``threshold`` is unknown. An SVM only knows the classes it was trained on, so it needs at least
two identities, and it must be retrained after every change (it holds no per-template state the
change log could update); the probabilities of a closed-set classifier also spread over the
known people, so a stranger can still get a fairly high probability for someone. The distance
rule of ``Identifier`` is the default for that reason; this is the alternative for comparison.

Defaults: C = 10 (embeddings are unit vectors, so C = 1 underfits: on 8 LFW people with 4 photos
each, C = 1 put 62% of other photos in the right class, C = 10 all of them) and threshold 0.4
(probabilities spread over the classes: with 8 people the right class got 0.33-0.57, strangers at
most 0.38). Both depend on the number of identities; measure before relying on them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.svm import SVC

from worker.errors import WatchlistError
from worker.models.face_spec import EMBEDDING_SIZE
from worker.watchlist.store import WatchlistStore


@dataclass(frozen=True)
class SvmPrediction:
    """One face: ``identity_id`` is set when the probability reaches the threshold."""

    identity_id: str | None
    candidate_id: str
    probability: float


class SvmClassifier:
    """Linear SVM over templates; ``threshold`` is the minimum class probability for a match."""

    def __init__(self, threshold: float = 0.4, c: float = 10.0, seed: int = 0) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise WatchlistError(f"SVM probability threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold
        self._svm = SVC(kernel="linear", C=c, probability=True, random_state=seed)
        self.classes: np.ndarray | None = None
        self.version: int | None = None

    def fit(self, embeddings: np.ndarray, labels: list[str] | np.ndarray) -> SvmClassifier:
        """Train on (N, 128) embeddings with one identity id per row."""
        matrix = np.asarray(embeddings, np.float32).reshape(-1, EMBEDDING_SIZE)
        labels = np.asarray(labels, dtype=object)
        if len(labels) != len(matrix):
            raise WatchlistError("SVM: one label per embedding")
        classes = np.unique(labels)
        if len(classes) < 2:
            raise WatchlistError(f"an SVM needs templates of at least 2 identities, the watchlist has {len(classes)}")
        with warnings.catch_warnings():
            # scikit-learn 1.9 deprecates probability=True (removal planned for 1.11) in favour of
            # CalibratedClassifierCV, which calibrated worse on a few photos per person (LFW trial).
            warnings.filterwarnings("ignore", message=".*probability.*", category=FutureWarning)
            self._svm.fit(matrix, labels.astype(str))
        self.classes = self._svm.classes_
        return self

    @classmethod
    def from_store(cls, store: WatchlistStore, threshold: float = 0.4, c: float = 10.0) -> SvmClassifier:
        """Train on every template of the store; remembers the store version it reflects."""
        version, _, identities, embeddings = store.snapshot()
        classifier = cls(threshold, c).fit(embeddings, identities)
        classifier.version = version
        return classifier

    def predict(self, embeddings: np.ndarray) -> list[SvmPrediction]:
        """The most probable identity of each row, or None below the threshold."""
        if self.classes is None:
            raise WatchlistError("SVM: fit it before predicting")
        matrix = np.asarray(embeddings, np.float32).reshape(-1, EMBEDDING_SIZE)
        if not len(matrix):
            return []
        probabilities = self._svm.predict_proba(matrix)
        best = probabilities.argmax(axis=1)
        top = probabilities[np.arange(len(matrix)), best]
        candidates = self.classes[best]
        return [
            SvmPrediction(str(c) if p >= self.threshold else None, str(c), float(p))
            for c, p in zip(candidates, top, strict=True)
        ]
