"""Measure what encryption at rest (watchlist.encryption_key) costs the store.

For 10,000 and 100,000 random templates (10 per identity), plaintext against AES-256-GCM: the
enrollment writes, the consistent snapshot an index is built from (every embedding decrypted),
listing every identity (every name and metadata decrypted, sorted in Python), the store's size,
and `rekey` (re-encrypt everything, checkpoint, check the old ciphertexts are gone).
docs/watchlist.md quotes it.

Usage (about two minutes on 2 CPU cores):

    PYTHONPATH=. python scripts/measure_encryption.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from worker.watchlist.index import WatchlistIndex
from worker.watchlist.store import WatchlistStore

PER_IDENTITY = 10


def _timed(action) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def measure(count: int, key: bytes | None, folder: Path) -> dict[str, float]:
    path = folder / ("sealed.db" if key else "plain.db")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(count, 128)).astype(np.float32)
    figures: dict[str, float] = {}
    with WatchlistStore(path, key=key) as store:
        start = time.perf_counter()
        for first in range(0, count, PER_IDENTITY):
            rows = vectors[first : first + PER_IDENTITY]
            store.add_identity_with_templates(f"Person {first}", rows, {"n": first}, sources=["p.jpg"] * len(rows))
        figures["enroll"] = time.perf_counter() - start
        figures["snapshot"], _ = _timed(store.snapshot)
        figures["index build"], _ = _timed(lambda: WatchlistIndex.build(store, progress=False))
        figures["list"], _ = _timed(store.list_identities)
        store.checkpoint()
        figures["MB"] = path.stat().st_size / 1e6
        if key is not None:
            figures["rekey"], result = _timed(lambda: store.rekey(os.urandom(32)))
            assert result["erasure"] == "complete", result  # type: ignore[index]
    return figures


def main() -> None:
    print("| templates | store | enroll (all) | snapshot read | index build | list identities | file | rekey |")
    print("|---|---|---|---|---|---|---|---|")
    for count in (10_000, 100_000):
        for key in (None, os.urandom(32)):
            with tempfile.TemporaryDirectory() as folder:
                f = measure(count, key, Path(folder))
            rekey = f"{f['rekey']:.2f} s" if "rekey" in f else "-"
            print(
                f"| {count:,} | {'AES-256-GCM' if key else 'plaintext'} | {f['enroll']:.2f} s | {f['snapshot']:.2f} s "
                f"| {f['index build']:.2f} s | {f['list']:.2f} s | {f['MB']:.1f} MB | {rekey} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
