"""Micro-batching: chips from every camera go through the network together.

Callers submit the chips of one frame and get a Future. A single thread gathers submissions
until ``max_batch`` chips are waiting or the oldest has waited ``max_wait_ms``, runs ONE batched
step for all of them (the forward pass and the watchlist search: worker/stream/search.py), and
hands each caller its rows.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.models.face_spec import EMBEDDING_SIZE

log = logging.getLogger(__name__)

Process = Callable[[np.ndarray], tuple[np.ndarray, list[Any]]]  # chips -> (embeddings, one result per row)


@dataclass
class _Request:
    chips: np.ndarray
    future: Future
    submitted: float


class EmbeddingBatcher:
    """One background thread that embeds (and identifies) submitted chips in batches."""

    def __init__(
        self,
        process: Process,
        max_batch: int = 32,
        max_wait_ms: float = 10.0,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._process_chips = process
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self._on_batch = on_batch
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="embedding-batcher", daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, chips: np.ndarray) -> Future:
        """Future of (embeddings (N, EMBEDDING_SIZE), one result per chip) for these chips."""
        future: Future = Future()
        if self._closed:
            future.set_exception(RuntimeError("embedding batcher is closed"))
        elif len(chips) == 0:
            future.set_result((np.zeros((0, EMBEDDING_SIZE), np.float32), []))
        else:
            self._queue.put(_Request(chips, future, time.monotonic()))
        return future

    def close(self) -> None:
        """Finish what was submitted, then stop the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        batch, size, stop = [first], len(first.chips), False
        deadline = first.submitted + self.max_wait
        while size < self.max_batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
            size += len(item.chips)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._gather(first)
            self._process(batch)

    def _process(self, batch: list[_Request]) -> None:
        started = time.monotonic()
        try:
            chips = np.concatenate([request.chips for request in batch])
            embeddings, results = self._process_chips(chips)
        except Exception as exc:  # a failed batch fails its callers, never the thread
            log.exception("embedding batch of %d requests failed", len(batch))
            for request in batch:
                request.future.set_exception(exc)
            return
        if self._on_batch:
            self._on_batch(len(chips), time.monotonic() - started)
        start = 0
        for request in batch:
            end = start + len(request.chips)
            request.future.set_result((embeddings[start:end], results[start:end]))
            start = end
