"""The two decision rules of the watchlist, nearest template and SVM, on one open-set split.

Each identity with more than ``templates`` images enrolls its first ``templates`` (a real
watchlist store, index and ``Identifier``, as the worker and ``identify`` use them); its other
images are mated probes. The first image of every identity with fewer is a stranger (a non-mated
probe). Every probe is identified under each rule at the configured thresholds and counted as a
correct match, a wrong match (someone else named), uncertain or unknown.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.config import WatchlistConfig
from worker.errors import FacewatchError
from worker.watchlist.identify import MATCH, UNCERTAIN, Identifier
from worker.watchlist.index import WatchlistIndex
from worker.watchlist.store import WatchlistStore
from worker.watchlist.svm import SvmClassifier

BATCH = 256


@dataclass(frozen=True)
class TemplateSplit:
    """Several templates per enrolled person; labels index ``names``."""

    names: list[str]
    gallery: list[Path]
    gallery_labels: np.ndarray
    mated: list[Path]
    mated_labels: np.ndarray
    non_mated: list[Path]


def split_with_templates(identities: dict[str, list[Path]], templates: int) -> TemplateSplit:
    """Enroll the first ``templates`` images of each identity that has more; strangers are the rest."""
    if templates < 1:
        raise FacewatchError(f"--templates must be at least 1, got {templates}")
    names = sorted(name for name, images in identities.items() if len(images) > templates)
    if len(names) < 2:
        raise FacewatchError(f"fewer than 2 identities have more than {templates} images: nothing to compare")
    gallery = [(path, label) for label, name in enumerate(names) for path in identities[name][:templates]]
    mated = [(path, label) for label, name in enumerate(names) for path in identities[name][templates:]]
    non_mated = [images[0] for name, images in sorted(identities.items()) if len(images) <= templates]
    if not non_mated:
        raise FacewatchError(f"no identity has {templates} or fewer images: no strangers to measure false matches")
    return TemplateSplit(
        names=names,
        gallery=[path for path, _ in gallery],
        gallery_labels=np.array([label for _, label in gallery], np.int64),
        mated=[path for path, _ in mated],
        mated_labels=np.array([label for _, label in mated], np.int64),
        non_mated=non_mated,
    )


@dataclass(frozen=True)
class RuleResult:
    """How one decision rule did: rates over mated and non-mated probes."""

    rule: str
    correct: float  # mated probes matched to their own identity (TPIR at this operating point)
    wrong: float  # mated probes matched to someone else
    mated_uncertain: float
    false_match: float  # strangers matched to anyone (FPIR)
    stranger_uncertain: float

    def as_dict(self) -> dict[str, float | str]:
        return {key: (round(value, 6) if isinstance(value, float) else value) for key, value in vars(self).items()}


def compare_rules(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    mated: np.ndarray,
    mated_labels: np.ndarray,
    non_mated: np.ndarray,
    config: WatchlistConfig,
    rules: Sequence[str] = ("nearest", "svm"),
) -> list[RuleResult]:
    """Identify every probe under each rule through a real store, index and Identifier."""
    keep = ~np.isnan(gallery).any(axis=1)
    with (
        tempfile.TemporaryDirectory(prefix="facewatch-rules-") as folder,
        WatchlistStore(Path(folder) / "rules.db") as store,
    ):
        ids = []
        for label in np.unique(gallery_labels[keep]):
            own_templates = gallery[keep & (gallery_labels == label)]
            identity, _ = store.add_identity_with_templates(f"person {label}", own_templates)
            ids.append((int(label), identity.id))
        label_of = {identity_id: label for label, identity_id in ids}
        index = WatchlistIndex.build(store, config.index_kind, progress=False)
        results = []
        for rule in rules:
            identifier = Identifier.from_config(store, index, config)
            if rule == "svm":
                identifier.classifier = SvmClassifier.from_config(store, config)
            mated_answers = list(_identify(identifier, mated))
            stranger_answers = list(_identify(identifier, non_mated))
            named = np.array([a.status == MATCH for a in mated_answers])
            own = np.array(
                [label_of.get(a.identity_id) == label for a, label in zip(mated_answers, mated_labels, strict=True)]
            )
            results.append(
                RuleResult(
                    rule=rule,
                    correct=float(np.mean(named & own)),
                    wrong=float(np.mean(named & ~own)),
                    mated_uncertain=float(np.mean([a.status == UNCERTAIN for a in mated_answers])),
                    false_match=float(np.mean([a.status == MATCH for a in stranger_answers])),
                    stranger_uncertain=float(np.mean([a.status == UNCERTAIN for a in stranger_answers])),
                )
            )
        return results


def _identify(identifier: Identifier, vectors: np.ndarray) -> Iterator:
    # A probe without an embedding (no face found and no fallback) is identified as nobody.
    vectors = np.where(np.isnan(vectors), 0.0, vectors).astype(np.float32)
    for start in range(0, len(vectors), BATCH):
        yield from identifier.identify(vectors[start : start + BATCH])
