"""The embedding micro-batcher: many submissions, one forward pass; failures reach their callers only."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from worker.models.face_spec import CHIP_SIZE, EMBEDDING_SIZE
from worker.stream.batcher import EmbeddingBatcher


def _chips(n: int, value: int) -> np.ndarray:
    return np.full((n, CHIP_SIZE, CHIP_SIZE, 3), value, np.uint8)


class _Recorder:
    """A batch step (chips -> embeddings, results) that records the batch sizes it was called with."""

    def __init__(self, fail_on: int | None = None, gate: threading.Event | None = None) -> None:
        self.sizes: list[int] = []
        self.fail_on = fail_on
        self.gate = gate

    def __call__(self, chips: np.ndarray) -> tuple[np.ndarray, list[float]]:
        if self.gate is not None:
            self.gate.wait(5)
        self.sizes.append(len(chips))
        if self.fail_on is not None and (chips[:, 0, 0, 0] == self.fail_on).any():
            raise RuntimeError("bad batch")
        out = np.zeros((len(chips), EMBEDDING_SIZE), np.float32)
        out[:, 0] = chips[:, 0, 0, 0]
        return out, [float(value) for value in out[:, 0]]


def test_submissions_waiting_together_share_one_forward_pass_and_get_their_own_rows():
    gate = threading.Event()
    embed = _Recorder(gate=gate)
    batches: list[int] = []
    batcher = EmbeddingBatcher(embed, max_batch=8, max_wait_ms=200, on_batch=lambda n, _: batches.append(n))
    try:
        first = batcher.submit(_chips(1, 1))  # taken at once; the gate holds its pass back
        futures = [batcher.submit(_chips(2, value)) for value in (2, 3, 4)]
        gate.set()
        assert first.result(5)[1] == [1.0]
        for value, future in zip((2, 3, 4), futures, strict=True):
            embeddings, results = future.result(5)
            assert embeddings.shape == (2, EMBEDDING_SIZE) and results == [float(value)] * 2
        assert sum(embed.sizes) == 7 and len(embed.sizes) < 4  # the queued three did not go one by one
        assert batches == embed.sizes
    finally:
        batcher.close()


def test_max_batch_splits_and_max_wait_flushes_a_lone_request():
    embed = _Recorder()
    batcher = EmbeddingBatcher(embed, max_batch=4, max_wait_ms=1)
    try:
        embeddings, results = batcher.submit(_chips(3, 9)).result(5)
        assert embeddings[:, 0].tolist() == [9.0] * 3 and results == [9.0] * 3
        assert embed.sizes == [3]
    finally:
        batcher.close()


def test_a_failed_batch_fails_its_callers_and_the_thread_goes_on():
    batcher = EmbeddingBatcher(_Recorder(fail_on=7), max_batch=1, max_wait_ms=0)
    try:
        with pytest.raises(RuntimeError, match="bad batch"):
            batcher.submit(_chips(1, 7)).result(5)
        assert batcher.submit(_chips(1, 5)).result(5)[0][0, 0] == 5.0
    finally:
        batcher.close()


def test_empty_submissions_and_a_closed_batcher():
    batcher = EmbeddingBatcher(_Recorder())
    embeddings, results = batcher.submit(_chips(0, 0)).result(1)
    assert embeddings.shape == (0, EMBEDDING_SIZE) and results == []
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(_chips(1, 1)).result(1)
