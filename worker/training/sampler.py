"""Batches of P identities x K faces, reproducible from a seed.

An identity with at least K faces gives K distinct ones; one with fewer (but at least 2, so that it has a
positive) gives all of its faces and the rest drawn again with replacement (augmentation makes the repeats
differ); one with a single face never enters a triplet batch (``eligible``). Identities are drawn without
replacement within an epoch of the eligible ones, reshuffled at each epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from worker.errors import FacewatchError


class PKSampler:
    """Index batches of ``people`` identities x ``faces`` faces over ``labels`` (one identity number per face).

    The state is the numpy generator plus the position in the current epoch's order; ``state()`` and
    ``restore()`` carry it through a checkpoint, so that a resumed run draws the batches the uninterrupted one
    would have drawn.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        people: int,
        faces: int,
        seed: int = 0,
        different: np.ndarray | None = None,
    ) -> None:
        """``different``: (identities x identities) bool, True where two identities are known to be different
        people (tracks on screen together); then each batch's people after the first are drawn among those known
        different from someone already in it, where there are any, so that its triplets have negatives."""
        if people < 2:
            raise FacewatchError(f"a batch needs at least 2 people for triplets, got --people {people}")
        if faces < 2:
            raise FacewatchError(f"a batch needs at least 2 faces per person for triplets, got --faces {faces}")
        labels = np.asarray(labels, np.int64)
        self.people, self.faces = people, faces
        self.members = {int(label): np.flatnonzero(labels == label) for label in np.unique(labels)}
        self.eligible = sorted(label for label, rows in self.members.items() if len(rows) >= 2)
        if len(self.eligible) < people:
            raise FacewatchError(
                f"triplet training needs at least {people} people with 2 or more faces each (--people), "
                f"found {len(self.eligible)}"
            )
        self.different = different
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []
        self.position = 0

    def _next_people(self) -> list[int]:
        chosen: list[int] = []
        while len(chosen) < self.people:
            if chosen and self.different is not None:
                known = np.flatnonzero(self.different[chosen].any(axis=0))
                candidates = sorted(set(known.tolist()) & set(self.eligible) - set(chosen))
                if candidates:
                    chosen.append(int(self.rng.choice(candidates)))
                    continue
            if self.position >= len(self.order):
                self.order = [int(x) for x in self.rng.permutation(self.eligible)]
                self.position = 0
            label = self.order[self.position]
            self.position += 1
            if label not in chosen:  # an epoch boundary may bring back someone already in this batch
                chosen.append(label)
        return chosen

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, labels) of the next batch: P x K rows, grouped by identity."""
        indices, labels = [], []
        for label in self._next_people():
            rows = self.members[label]
            if len(rows) >= self.faces:
                picked = self.rng.choice(rows, self.faces, replace=False)
            else:
                picked = np.concatenate([rows, self.rng.choice(rows, self.faces - len(rows), replace=True)])
            indices.append(picked)
            labels.append(np.full(self.faces, label))
        return np.concatenate(indices), np.concatenate(labels)

    def state(self) -> dict:
        """What a checkpoint keeps to continue the same sequence of batches."""
        return {"rng": self.rng.bit_generator.state, "order": list(self.order), "position": self.position}

    def restore(self, state: dict) -> None:
        """Continue from ``state()``."""
        self.rng.bit_generator.state = state["rng"]
        self.order = [int(x) for x in state["order"]]
        self.position = int(state["position"])


class FaceSampler:
    """Batches of ``size`` faces drawn without replacement per epoch, for distillation without labels."""

    def __init__(self, count: int, size: int, seed: int = 0) -> None:
        if count < 1:
            raise FacewatchError("no face to train on")
        self.count, self.size = count, size
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []
        self.position = 0

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, labels of -1) of the next batch."""
        picked: list[int] = []
        while len(picked) < self.size:
            if self.position >= len(self.order):
                self.order = [int(x) for x in self.rng.permutation(self.count)]
                self.position = 0
            picked.append(self.order[self.position])
            self.position += 1
        return np.array(picked, np.int64), np.full(len(picked), -1, np.int64)

    state = PKSampler.state
    restore = PKSampler.restore
