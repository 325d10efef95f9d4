"""Triplet loss with FaceNet's online semi-hard mining, and the distillation loss.

Within a batch of P people x K faces, every (anchor, positive) pair of one person takes, among the
faces known to be of someone else, the hardest negative that is still farther from the anchor than
the positive and within the margin: d(a, p) < d(a, n) < d(a, p) + margin. A pair without such a
negative is inactive (no gradient); the fraction of active pairs is what the progress bar shows.
Distances are squared Euclidean on unit vectors, as in FaceNet and OpenFace (margin 0.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MARGIN = 0.2


@dataclass
class Triplets:
    """Mined triplets as index tensors into the batch, and how many anchor-positive pairs there were."""

    anchors: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor
    pairs: int

    @property
    def active_fraction(self) -> float:
        """Share of anchor-positive pairs that found a semi-hard negative."""
        return len(self.anchors) / self.pairs if self.pairs else 0.0


def squared_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, B) squared Euclidean distances between rows."""
    norms = (embeddings * embeddings).sum(dim=1)
    return (norms[:, None] + norms[None, :] - 2.0 * embeddings @ embeddings.T).clamp_min(0.0)


def semi_hard_triplets(
    distances: torch.Tensor, labels: torch.Tensor, different: torch.Tensor | None = None, margin: float = MARGIN
) -> Triplets:
    """Semi-hard triplets of a batch.

    ``distances``: (B, B) squared distances (not differentiated here: mining picks indices only);
    ``labels``: (B,) identity per face; ``different``: optional (B, B) bool, True where two faces are known to be
    of different people (default: different labels). Tracks of a video are only known different when they were
    on screen together, so there the caller passes this mask.
    """
    d = distances.detach()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pair_mask = same & ~eye
    negative_ok = ~same if different is None else (different & ~same)
    a_idx, p_idx = torch.nonzero(pair_mask, as_tuple=True)
    d_ap = d[a_idx, p_idx][:, None]
    d_an = d[a_idx]  # (pairs, B)
    semi = negative_ok[a_idx] & (d_an > d_ap) & (d_an < d_ap + margin)
    # Hardest of the semi-hard: the smallest d(a, n) among them.
    masked = torch.where(semi, d_an, torch.full_like(d_an, float("inf")))
    best = masked.argmin(dim=1)
    active = semi.any(dim=1)
    return Triplets(a_idx[active], p_idx[active], best[active], len(a_idx))


def triplet_loss(embeddings: torch.Tensor, triplets: Triplets, margin: float = MARGIN) -> torch.Tensor:
    """Mean of max(0, d(a, p) - d(a, n) + margin) over the mined triplets (0 when none is active)."""
    if len(triplets.anchors) == 0:
        return embeddings.sum() * 0.0  # keeps the graph: backward() works on a batch without triplets
    a, p, n = embeddings[triplets.anchors], embeddings[triplets.positives], embeddings[triplets.negatives]
    d_ap = ((a - p) ** 2).sum(dim=1)
    d_an = ((a - n) ** 2).sum(dim=1)
    return F.relu(d_ap - d_an + margin).mean()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared Euclidean distance between the unit vectors of student and teacher (2 - 2 cos)."""
    s = F.normalize(student, dim=1)
    t = F.normalize(teacher.detach().to(s.dtype), dim=1)
    return ((s - t) ** 2).sum(dim=1).mean()
