"""P x K batches: who is drawn, how often, with replacement where a person has too few faces."""

from __future__ import annotations

import numpy as np
import pytest

from worker.errors import FacewatchError
from worker.training.sampler import FaceSampler, PKSampler

# Person 0: 6 faces, 1: 4, 2: 2, 3: 1 (no positive: never in a triplet batch), 4: 5.
LABELS = np.array([0] * 6 + [1] * 4 + [2] * 2 + [3] + [4] * 5)


def test_a_batch_is_p_people_times_k_faces_of_each():
    sampler = PKSampler(LABELS, people=3, faces=3, seed=1)
    for _ in range(20):
        indices, labels = sampler.batch()
        assert len(indices) == 9
        assert (LABELS[indices] == labels).all()
        people = labels.reshape(3, 3)
        assert (people == people[:, :1]).all()  # grouped: K rows of one person each
        assert len(set(people[:, 0].tolist())) == 3
        assert 3 not in labels  # a single face has no positive
        for person, rows in zip(people[:, 0], indices.reshape(3, 3), strict=True):
            if (person == LABELS).sum() >= 3:
                assert len(set(rows.tolist())) == 3  # enough faces: all distinct
            else:
                assert set(rows.tolist()) == set(np.flatnonzero(person == LABELS).tolist())  # all, then repeats


def test_every_eligible_person_comes_once_per_epoch():
    sampler = PKSampler(LABELS, people=2, faces=2, seed=3)
    seen = [int(p) for _ in range(2) for p in sampler.batch()[1][::2]]
    assert sorted(seen) == [0, 1, 2, 4]


def test_same_seed_same_batches_and_a_restored_state_continues_the_sequence():
    a, b = PKSampler(LABELS, 2, 3, seed=7), PKSampler(LABELS, 2, 3, seed=7)
    first = [a.batch()[0].tolist() for _ in range(3)]
    assert first == [b.batch()[0].tolist() for _ in range(3)]
    state = a.state()
    expected = [a.batch()[0].tolist() for _ in range(4)]
    c = PKSampler(LABELS, 2, 3, seed=99)
    c.restore(state)
    assert [c.batch()[0].tolist() for _ in range(4)] == expected
    assert first != [PKSampler(LABELS, 2, 3, seed=8).batch()[0].tolist() for _ in range(3)]


def test_known_different_people_are_drawn_together():
    labels = np.repeat(np.arange(6), 2)
    different = np.zeros((6, 6), bool)
    different[0, 5] = different[5, 0] = True  # tracks 0 and 5 were on screen together, nobody else was
    sampler = PKSampler(labels, people=2, faces=2, seed=0, different=different)
    firsts = set()
    for _ in range(12):
        labels_drawn = sampler.batch()[1]
        firsts.add(int(labels_drawn[0]))
        if labels_drawn[0] in (0, 5):  # the batch's first person has someone known different: drawn with them
            assert set(labels_drawn.tolist()) == {0, 5}
    assert firsts & {0, 5}


@pytest.mark.parametrize(
    ("labels", "people", "faces", "message"),
    [
        ([0, 0, 1], 2, 2, "at least 2 people with 2 or more faces each"),
        ([0, 0, 1, 1], 1, 2, "at least 2 people"),
        ([0, 0, 1, 1], 2, 1, "at least 2 faces per person"),
    ],
)
def test_too_few_people_is_a_one_line_error(labels, people, faces, message):
    with pytest.raises(FacewatchError, match=message) as caught:
        PKSampler(labels, people, faces)
    assert "\n" not in str(caught.value)


def test_face_sampler_draws_every_face_once_per_epoch():
    sampler = FaceSampler(10, 5, seed=0)
    drawn = np.concatenate([sampler.batch()[0] for _ in range(2)])
    assert sorted(drawn.tolist()) == list(range(10))
