"""Measure what watchlist.erasure_wait_s must cover: how long facewatch's own reads hold a snapshot,
and what a verified removal costs.

For stores of 10,000 and 100,000 random templates: the time of an export (its one read transaction
plus writing the file), of the consistent snapshot the index is built from, and of a removal with
its checkpoint (TRUNCATE) and the byte check of the file and WAL. docs/watchlist.md quotes it.

Usage (about a minute on 2 CPU cores):

    PYTHONPATH=. python scripts/measure_erasure.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from worker.watchlist.store import WatchlistStore


def main() -> None:
    print("| templates | store file | export | snapshot read | remove + checkpoint + byte check |")
    print("|---|---|---|---|---|")
    for count in (10_000, 100_000):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "w.db"
            rng = np.random.default_rng(0)
            with WatchlistStore(path) as store:
                for start in range(0, count, 1000):
                    store.add_identity_with_templates(f"p{start}", rng.normal(size=(1000, 128)).astype(np.float32))
                victim, _ = store.add_identity_with_templates("Victim", rng.normal(size=(5, 128)).astype(np.float32))
                store.checkpoint()
                began = time.perf_counter()
                store.export(Path(folder) / "export.jsonl")
                export_s = time.perf_counter() - began
                began = time.perf_counter()
                store.snapshot()
                snapshot_s = time.perf_counter() - began
                began = time.perf_counter()
                store.remove_identity(victim.id)
                remove_s = time.perf_counter() - began
                assert store.erasure_pending is None
                size_mb = path.stat().st_size / 1e6
            print(f"| {count:,} | {size_mb:.1f} MB | {export_s:.2f} s | {snapshot_s:.2f} s | {remove_s:.3f} s |")


if __name__ == "__main__":
    main()
