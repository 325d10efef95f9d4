"""Settings shared by the fuzz tests (hypothesis): a short fixed run in CI, a long random one on demand.

CI (FACEWATCH_FUZZ_EXAMPLES unset): 300 examples per property, derandomized, so every run tries
the same inputs and a failure reproduces. A long run draws fresh random inputs:

    FACEWATCH_FUZZ_EXAMPLES=100000 python -m pytest -q -p no:cacheprovider -o timeout=0 \
        tests/stream/test_frames_fuzz.py tests/watchlist/test_replication_fuzz.py tests/test_config_fuzz.py

docs/operations.md ("Fuzzing") has the figures of the last long run.
"""

from __future__ import annotations

import os
import random
import time

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("FACEWATCH_FUZZ_EXAMPLES", "300"))
LONG_RUN = "FACEWATCH_FUZZ_EXAMPLES" in os.environ

fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,  # machines are noisy; speed is not what is tested
    derandomize=not LONG_RUN,
    database=None,  # nothing written into the source tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
# Structured strategies (round trips, hostile inputs shaped like the real ones) cost hypothesis
# 5-100 ms an input to draw: a long run gives them a fiftieth of its count (at least the CI count)
# and reaches its count with the seeded properties, whose one draw per input is a seed.
fuzz_structured = settings(fuzz, max_examples=max(EXAMPLES // 50, min(EXAMPLES, 300)))
# Each example a SQLite transaction.
fuzz_store = settings(fuzz, max_examples=max(EXAMPLES // 50, min(EXAMPLES, 50)))


# Inputs tried per property in this process, printed at the end of the run (tests/conftest.py).
TRIED: dict[str, int] = {}


PROGRESS = os.environ.get("FACEWATCH_FUZZ_PROGRESS")  # a file to append "time property count" to


def tried(prop: str) -> None:
    """Count one generated input of the property ``prop`` (every 1,000th noted in FACEWATCH_FUZZ_PROGRESS)."""
    TRIED[prop] = TRIED.get(prop, 0) + 1
    if PROGRESS and TRIED[prop] % 1000 == 0:
        with open(PROGRESS, "a", encoding="utf-8") as progress:
            progress.write(f"{time.strftime('%H:%M:%S')} {prop}: {TRIED[prop]}\n")


def random_json(rng: random.Random, depth: int = 0) -> object:
    """A random JSON value, built by ``rng`` (the seeded properties: one hypothesis draw per input)."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 2**31, 2**64, -(2**70), rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 0.5, 1e308, -1e-308, rng.uniform(-1e6, 1e6)])
    if kind in (4, 5):
        return "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x2FFF)])) for _ in range(rng.randrange(12))
        )
    if kind in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(random_json(rng, 3)): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def mutate(rng: random.Random, data: bytes) -> bytes:
    """``data`` with one to four bytes flipped, runs cut, inserted or removed."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        at = rng.randrange(len(out) + 1)
        action = rng.randrange(4)
        if action == 0 and at < len(out):
            out[at] = rng.randrange(256)
        elif action == 1:
            del out[at:]
        elif action == 2:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        else:
            del out[at : at + rng.randrange(1, 17)]
    return bytes(out)
