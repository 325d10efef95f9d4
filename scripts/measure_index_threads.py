"""The thread policy for the watchlist index: OMP_WAIT_POLICY and FAISS threads, measured at n templates.

OpenMP reads its wait policy once, when the runtime starts, so each policy runs in its own child
process; the children take turns over ``--rounds`` rounds (so machine load hits every policy
alike) and each times ``--calls`` searches of ``--batch`` faces for the top 10 templates, as the
identifier asks. The index (the watchlist's own, kind auto) and the real LFW queries among
synthetic distractors are built once, as `facewatch bench index` builds them, and saved under
``--work``. Printed: p50 and p99 per policy, their ratio to PASSIVE with 2 threads (the worker's
setting), and the load average of each round.

    PYTHONPATH=. python scripts/measure_index_threads.py --n 1000000 --rounds 4

takes about 4 minutes at 1M on 2 cores (most of it the one build).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

POLICIES = {
    "PASSIVE, 2 threads": {"OMP_WAIT_POLICY": "PASSIVE", "FACEWATCH_BENCH_THREADS": "2"},
    "ACTIVE, 2 threads": {"OMP_WAIT_POLICY": "ACTIVE", "FACEWATCH_BENCH_THREADS": "2"},
    "1 thread": {"OMP_WAIT_POLICY": "PASSIVE", "FACEWATCH_BENCH_THREADS": "1"},
}


def prepare(n: int, work: Path) -> None:
    """Build the database, the watchlist index and the queries once; save them under ``work``."""
    from worker.bench.index import DistractorModel, build_database, split_gallery
    from worker.cli.bench import default_lfw_dir
    from worker.config import Settings
    from worker.evaluation.cache import embed_identity_tree
    from worker.watchlist.index import WatchlistIndex

    _, labels, result = embed_identity_tree(default_lfw_dir(), Settings(), None, progress=False)
    split = split_gallery(result.embeddings, labels)
    model = DistractorModel.fit(np.concatenate([split.gallery, split.queries]))
    database = build_database(split, n, model)
    index = WatchlistIndex.from_arrays(np.arange(n), [f"id{row}" for row in range(n)], database, "auto")
    index.save(work / "index.npz")
    np.save(work / "queries.npy", split.queries)


def child(work: Path, batch: int, calls: int) -> None:
    """Time ``calls`` searches (run in a child process with the policy's environment)."""
    import faiss

    from worker.watchlist.index import WatchlistIndex

    faiss.omp_set_num_threads(int(os.environ["FACEWATCH_BENCH_THREADS"]))
    index = WatchlistIndex.load(work / "index.npz")
    queries = np.load(work / "queries.npy")
    index.search(queries[:batch], 10)
    times = []
    for call in range(calls):
        start = (call * batch) % (len(queries) - batch)
        began = time.perf_counter()
        index.search(queries[start : start + batch], 10)
        times.append(time.perf_counter() - began)
    print(json.dumps(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calls", type=int, default=100, help="timed searches per policy and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("/tmp/facewatch-index-threads"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.work, args.batch, args.calls)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    if not (args.work / "index.npz").is_file():
        prepare(args.n, args.work)
    times: dict[str, list[float]] = {name: [] for name in POLICIES}
    for round_ in range(args.rounds):
        for name, env in POLICIES.items():
            command = [sys.executable, __file__, "--child", "--work", str(args.work)]
            command += ["--batch", str(args.batch), "--calls", str(args.calls)]
            out = subprocess.run(command, env={**os.environ, **env}, check=True, capture_output=True, text=True)
            times[name] += json.loads(out.stdout.splitlines()[-1])
        print(f"round {round_ + 1}: load average {os.getloadavg()[0]:.2f}", flush=True)
    reference = float(np.percentile(times["PASSIVE, 2 threads"], 50))
    print(f"\nn={args.n}, batch {args.batch}, top 10, {args.rounds} rounds x {args.calls} calls per policy")
    print(f"{'policy':>20}  {'p50 ms':>7}  {'p99 ms':>7}  {'p50/ref':>7}")
    for name, seconds in times.items():
        p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
        print(f"{name:>20}  {p50:7.2f}  {p99:7.2f}  {p50 / (reference * 1000):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
