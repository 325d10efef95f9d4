"""Semi-hard mining on hand-made distances, the triplet loss and the distillation loss."""

from __future__ import annotations

import torch

from worker.training.losses import distillation_loss, semi_hard_triplets, squared_distances, triplet_loss


def _distances(rows: list[list[float]]) -> torch.Tensor:
    d = torch.tensor(rows)
    return (d + d.T) / 2  # symmetric from the upper triangle the tests write twice


def test_the_hardest_negative_farther_than_the_positive_within_the_margin_is_chosen():
    # Faces 0, 1: person A; 2, 3, 4: others. d(0, 1) = 0.5. Negatives of anchor 0: 0.45 (closer than the
    # positive: hard, not semi-hard), 0.6 and 0.65 (semi-hard: 0.5 < d < 0.7), 0.9 (beyond the margin).
    d = _distances(
        [
            [0.0, 0.5, 0.45, 0.65, 0.6],
            [0.5, 0.0, 0.9, 0.9, 0.9],
            [0.45, 0.9, 0.0, 1.0, 1.0],
            [0.65, 0.9, 1.0, 0.0, 1.0],
            [0.6, 0.9, 1.0, 1.0, 0.0],
        ]
    )
    labels = torch.tensor([0, 0, 1, 2, 3])
    mined = semi_hard_triplets(d, labels, margin=0.2)
    assert mined.pairs == 2  # (0, 1) and (1, 0)
    # Anchor 1 has every negative at 0.9 >= 0.5 + 0.2: inactive.
    assert mined.anchors.tolist() == [0]
    assert mined.positives.tolist() == [1]
    assert mined.negatives.tolist() == [4]  # 0.6, the hardest of the semi-hard ones (not 0.45, not 0.65)
    assert mined.active_fraction == 0.5


def test_no_semi_hard_negative_means_no_active_triplet_and_a_zero_loss_that_still_backpropagates():
    d = _distances([[0.0, 0.1, 0.9], [0.1, 0.0, 0.9], [0.9, 0.9, 0.0]])
    mined = semi_hard_triplets(d, torch.tensor([0, 0, 1]), margin=0.2)
    assert mined.pairs == 2 and len(mined.anchors) == 0 and mined.active_fraction == 0.0
    embeddings = torch.randn(3, 4, requires_grad=True)
    loss = triplet_loss(embeddings, mined)
    loss.backward()
    assert float(loss.detach()) == 0.0 and embeddings.grad is not None


def test_negatives_only_where_the_caller_knows_two_faces_are_different_people():
    d = _distances([[0.0, 0.5, 0.6, 0.65], [0.5, 0.0, 2.0, 2.0], [0.6, 2.0, 0.0, 2.0], [0.65, 2.0, 2.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 2])
    different = torch.ones(4, 4, dtype=torch.bool)
    different[0, 2] = different[2, 0] = False  # track 1 was never on screen with track 0: maybe the same person
    mined = semi_hard_triplets(d, labels, different, margin=0.2)
    assert mined.negatives.tolist() == [3]


def test_triplet_loss_is_the_hinge_of_the_mined_triplets():
    e = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    d = squared_distances(e)
    assert torch.allclose(d, torch.cdist(e, e) ** 2, atol=1e-6)
    mined = semi_hard_triplets(d, torch.tensor([0, 0, 1, 1]), margin=0.5)
    loss = triplet_loss(e, mined, margin=0.5)
    a, p, n = mined.anchors, mined.positives, mined.negatives
    expected = torch.relu(d[a, p] - d[a, n] + 0.5).mean()
    assert len(a) > 0 and torch.isclose(loss, expected)


def test_distillation_loss_compares_directions_only():
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    assert float(distillation_loss(torch.tensor([[1.0, 0.0], [0.0, 3.0]]), teacher)) == 0.0
    # Orthogonal unit vectors are sqrt(2) apart: squared distance 2.
    assert abs(float(distillation_loss(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), teacher)) - 2.0) < 1e-6
