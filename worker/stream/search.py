"""The batched search step: chips -> descriptors -> watchlist decisions, exact where it matters.

The embedding batcher runs this once per batch. With a lowered search precision (``embedder.precision:
auto`` on a CPU with bfloat16 units) the batch is embedded in bf16, identified, and each face whose
decision a small distance change could flip (``Identifier.fragile`` within ``embedder.recheck_band``)
is embedded again in fp32 and identified again: the decisions are then fp32's wherever bf16's error
stays inside the band (measured: at most 0.004 on LFW; docs/benchmarks.md), at the cost of a second
forward pass for those few faces only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from worker.watchlist.identify import Identification

Embed = Callable[[np.ndarray], np.ndarray]  # chips -> embeddings
Identify = Callable[[np.ndarray], list[Identification]]  # embeddings -> one identification per row
Fragile = Callable[[list[Identification], float], np.ndarray]  # answers, band -> rows to check again
Search = Callable[[np.ndarray], tuple[np.ndarray, list[Identification]]]  # chips -> (embeddings, answers)


class CheckedSearch:
    """``search(chips)``: embed with ``embed``, identify, and redo the fragile rows with ``embed_exact``.

    Without ``embed_exact`` (fp32 search, or the check turned off) it is a plain embed + identify.
    ``on_recheck(n)`` is told how many faces each batch embedded again.
    """

    def __init__(
        self,
        embed: Embed,
        identify: Identify,
        embed_exact: Embed | None = None,
        fragile: Fragile | None = None,
        band: float = 0.0,
        on_recheck: Callable[[int], None] | None = None,
    ) -> None:
        self.embed = embed
        self.identify = identify
        checks = embed_exact is not None and fragile is not None and band > 0
        self.embed_exact = embed_exact if checks else None
        self.fragile = fragile if checks else None
        self.band = band
        self.on_recheck = on_recheck

    @property
    def checks(self) -> bool:
        """Whether close decisions are embedded again with ``embed_exact``."""
        return self.embed_exact is not None

    def __call__(self, chips: np.ndarray) -> tuple[np.ndarray, list[Identification]]:
        embeddings = self.embed(chips)
        answers = self.identify(embeddings)
        if self.embed_exact is None or self.fragile is None or not answers:  # both set, or neither
            return embeddings, answers
        rows = np.flatnonzero(self.fragile(answers, self.band))
        if self.on_recheck:
            self.on_recheck(len(rows))
        if len(rows) == 0:
            return embeddings, answers
        exact = self.embed_exact(chips[rows])
        embeddings = embeddings.copy()
        embeddings[rows] = exact
        for row, answer in zip(rows, self.identify(exact), strict=True):
            answers[row] = answer
        return embeddings, answers
