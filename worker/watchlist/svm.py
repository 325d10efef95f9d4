"""OpenFace's classifier: a linear SVM over the watchlist's templates, usable open-set.

A linear SVM (one-vs-one, Platt-scaled pairwise probabilities, as scikit-learn's
``SVC(kernel="linear", probability=True)``, which OpenFace's classifier uses) is trained on every
template with its identity as the label. Two things keep it honest on a watchlist, where most faces
belong to nobody on it:

- **Candidates from the index.** A face's class probabilities are computed among the identities of
  its nearest templates (the ``top_k`` the index returns), by libsvm's pairwise coupling restricted
  to those classes (Wu, Lin and Weng 2004, solved exactly as the linear system it is). Over all
  classes this gives scikit-learn's ``predict_proba`` (within its iterative solver's tolerance, 5e-4);
  among ten candidates it costs the same for 10 or 10,000 identities, where the full coupling grows
  with the square of the number of classes (32 faces against 500 identities: 360 ms in scikit-learn).
- **The distance gate.** A closed-set classifier spreads all its probability over the people it
  knows, so a stranger far from everyone would still be named. The identifier therefore keeps the
  distance rule's open-set boundary: a face farther than ``unknown_threshold`` from every template
  is unknown whatever the SVM says, and the SVM's choice is a match only when its probability
  reaches ``svm_min_probability`` and its own nearest template lies within ``match_threshold``
  (worker/watchlist/identify.py). The SVM thus chooses among the people a face is close enough to
  match, in place of the nearest template and the ambiguity margin.

An SVM learns nothing from one photo per person (two people with one photo each is a line through
two points, and Platt's scaling is fitted by cross-validation on the templates themselves), so it is
trained only when every identity has at least ``svm_min_templates`` templates and there are at
least two identities; otherwise ``fit`` refuses with the reason, and the worker falls back to the
distance rule and says so (docs/watchlist.md, "The SVM classifier").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.svm import SVC

from worker.config import WatchlistConfig
from worker.errors import WatchlistError
from worker.models.face_spec import EMBEDDING_SIZE
from worker.watchlist.store import WatchlistStore

_PROBABILITY_CLIP = 1e-7  # libsvm clips pairwise probabilities to this distance from 0 and 1


@dataclass(frozen=True)
class SvmPrediction:
    """One face: ``identity_id`` is set when the probability reaches the threshold."""

    identity_id: str | None
    candidate_id: str
    probability: float


class SvmClassifier:
    """Linear SVM over templates; ``threshold`` is the minimum class probability for a match."""

    def __init__(self, threshold: float = 0.4, c: float = 10.0, seed: int = 0, min_templates: int = 1) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise WatchlistError(f"SVM probability threshold must be in [0, 1], got {threshold}")
        if min_templates < 1:
            raise WatchlistError(f"SVM: min_templates must be at least 1, got {min_templates}")
        self.threshold = threshold
        self.min_templates = min_templates
        self._svm = SVC(kernel="linear", C=c, probability=True, random_state=seed, decision_function_shape="ovo")
        self.classes: np.ndarray | None = None
        self.version: int | None = None
        self._coef: np.ndarray | None = None  # (pairs, 128): OvO decision of classes i < j, positive for i
        self._intercept: np.ndarray | None = None
        self._prob_a: np.ndarray | None = None  # Platt's sigmoid per pair: P(i | f) = 1 / (1 + exp(A f + B))
        self._prob_b: np.ndarray | None = None

    def fit(self, embeddings: np.ndarray, labels: list[str] | np.ndarray) -> SvmClassifier:
        """Train on (N, 128) embeddings with one identity id per row."""
        matrix = np.asarray(embeddings, np.float32).reshape(-1, EMBEDDING_SIZE)
        labels = np.asarray(labels, dtype=object)
        if len(labels) != len(matrix):
            raise WatchlistError("SVM: one label per embedding")
        classes, counts = np.unique(labels.astype(str), return_counts=True)
        if len(classes) < 2:
            raise WatchlistError(f"an SVM needs templates of at least 2 identities, the watchlist has {len(classes)}")
        few = int((counts < self.min_templates).sum())
        if few:
            raise WatchlistError(
                f"an SVM needs at least {self.min_templates} templates of every identity "
                "(watchlist.svm_min_templates); "
                f"{few} of {len(classes)} identities have fewer (least: {int(counts.min())}): enroll more photos, or "
                "use the nearest-template rule"
            )
        with warnings.catch_warnings():
            # scikit-learn 1.9 deprecates probability=True (removal planned for 1.11) in favour of
            # CalibratedClassifierCV, which calibrated worse on a few photos per person (LFW trial).
            warnings.filterwarnings("ignore", message=".*probability.*", category=FutureWarning)
            self._svm.fit(matrix, labels.astype(str))
            self._prob_a = np.asarray(self._svm.probA_, np.float64)
            self._prob_b = np.asarray(self._svm.probB_, np.float64)
        self.classes = self._svm.classes_
        # A linear kernel's pairwise decisions are planes: keep them as arrays, so a face's decisions
        # among a few candidate classes are a gather and a dot product, not libsvm's all-pairs pass.
        # scikit-learn negates a two-class SVM's plane (its positive side is then the second class);
        # libsvm's sigmoids, kept as they are, read the first class's side as positive.
        sign = -1.0 if len(self.classes) == 2 else 1.0
        self._coef = sign * np.asarray(self._svm.coef_, np.float64)
        self._intercept = sign * np.asarray(self._svm.intercept_, np.float64)
        return self

    @classmethod
    def from_store(
        cls, store: WatchlistStore, threshold: float = 0.4, c: float = 10.0, min_templates: int = 1
    ) -> SvmClassifier:
        """Train on every template of the store; remembers the store version it reflects."""
        version, _, identities, embeddings = store.snapshot()
        classifier = cls(threshold, c, min_templates=min_templates).fit(embeddings, identities)
        classifier.version = version
        return classifier

    @classmethod
    def from_config(cls, store: WatchlistStore, config: WatchlistConfig) -> SvmClassifier:
        """The SVM of the ``watchlist`` section over the store's templates; WatchlistError says why not."""
        return cls.from_store(
            store, threshold=config.svm_min_probability, c=config.svm_c, min_templates=config.svm_min_templates
        )

    def class_positions(self, identity_ids: np.ndarray) -> np.ndarray:
        """Each identity id's class number, -1 for None or an identity the SVM was not trained on."""
        if self.classes is None:
            raise WatchlistError("SVM: fit it before predicting")
        ids = np.asarray(identity_ids, dtype=object)
        known = np.not_equal(ids, None)
        text = np.where(known, ids, "").astype(str)
        position = np.searchsorted(self.classes, text)
        position = np.minimum(position, len(self.classes) - 1)
        found = known & (self.classes[position] == text)
        return np.where(found, position, -1)

    def probabilities_among(self, embeddings: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Class probabilities of each face among its candidate classes.

        ``candidates`` is (N, K) class numbers (``class_positions``), -1 for none; a class repeated in
        a row counts once (its first place). Returns (N, K) probabilities summing to 1 over each row's
        distinct candidates, 0 for padding and repeats, and all 0 for a row without a candidate.
        """
        if self._coef is None:
            raise WatchlistError("SVM: fit it before predicting")
        x = np.asarray(embeddings, np.float64).reshape(-1, EMBEDDING_SIZE)
        cls = np.asarray(candidates, np.int64).reshape(len(x), -1)
        n, k = cls.shape
        if n == 0 or k == 0:
            return np.zeros((n, k))
        # A place counts when it holds a class not already seen earlier in the row.
        earlier = np.tril(np.ones((k, k), bool), -1)
        repeat = ((cls[:, :, None] == cls[:, None, :]) & earlier[None]).any(axis=2)
        real = (cls >= 0) & ~repeat
        classes = len(self.classes)
        i = np.minimum(cls[:, :, None], cls[:, None, :])
        j = np.maximum(cls[:, :, None], cls[:, None, :])
        pair_ok = real[:, :, None] & real[:, None, :] & (i != j)
        i, j = np.where(pair_ok, i, 0), np.where(pair_ok, j, 1)
        # OvO pairs are numbered (0,1), (0,2), ..., (0,n-1), (1,2), ...
        pair = i * classes - i * (i + 1) // 2 + (j - i - 1)
        decision = np.einsum("nd,nabd->nab", x, self._coef[pair]) + self._intercept[pair]
        p_low = 1.0 / (1.0 + np.exp(decision * self._prob_a[pair] + self._prob_b[pair]))
        p_low = np.clip(p_low, _PROBABILITY_CLIP, 1.0 - _PROBABILITY_CLIP)
        # A sigmoid that rises against the decision is a failed fit (an underfitted pair: with C = 1 on
        # LFW, 24% of them); such a pair says nothing, rather than the opposite of its decision.
        p_low = np.where(self._prob_a[pair] < 0, p_low, 0.5)
        # r[a, b]: probability of candidate a against candidate b, from the pair's sigmoid.
        a_is_low = cls[:, :, None] < cls[:, None, :]
        r = np.where(pair_ok, np.where(a_is_low, p_low, 1.0 - p_low), 0.0)
        # Wu, Lin and Weng's second method: minimise p'Qp subject to sum(p) = 1, with
        # Q[t, t] = sum_j r[j, t]^2 and Q[t, j] = -r[j, t] r[t, j]; padding is pinned to 0.
        q = -np.swapaxes(r, 1, 2) * r
        diagonal = np.arange(k)
        q[:, diagonal, diagonal] = (r**2).sum(axis=1)
        system = np.zeros((n, k + 1, k + 1))
        system[:, :k, :k] = np.where(real[:, :, None] & real[:, None, :], q, 0.0)
        system[:, diagonal, diagonal] = np.where(real, q[:, diagonal, diagonal], 1.0)
        system[:, :k, k] = real
        system[:, k, :k] = real
        rhs = np.zeros((n, k + 1, 1))
        has_any = real.any(axis=1)
        rhs[:, k, 0] = has_any
        system[~has_any, k, k] = 1.0  # no candidate: the empty constraint row is pinned too
        single = real.sum(axis=1) == 1
        probabilities = np.linalg.solve(system, rhs)[:, :k, 0]
        # One candidate: the system is still solvable (Q is 0 there) and gives it probability 1.
        probabilities = np.where(real, np.clip(probabilities, 0.0, 1.0), 0.0)
        total = probabilities.sum(axis=1, keepdims=True)
        probabilities = np.divide(probabilities, total, out=np.zeros_like(probabilities), where=total > 0)
        probabilities[single] = real[single].astype(float)
        return probabilities

    def predict(self, embeddings: np.ndarray) -> list[SvmPrediction]:
        """The most probable identity of each row among all classes, or None below the threshold."""
        if self.classes is None:
            raise WatchlistError("SVM: fit it before predicting")
        matrix = np.asarray(embeddings, np.float32).reshape(-1, EMBEDDING_SIZE)
        if not len(matrix):
            return []
        everyone = np.broadcast_to(np.arange(len(self.classes)), (len(matrix), len(self.classes)))
        probabilities = self.probabilities_among(matrix, everyone)
        best = probabilities.argmax(axis=1)
        top = probabilities[np.arange(len(matrix)), best]
        candidates = self.classes[best]
        return [
            SvmPrediction(str(c) if p >= self.threshold else None, str(c), float(p))
            for c, p in zip(candidates, top, strict=True)
        ]
