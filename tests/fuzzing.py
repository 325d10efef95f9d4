"""Settings shared by the fuzz tests (hypothesis): a short fixed run in CI, a long random one on demand.

CI (FACEWATCH_FUZZ_EXAMPLES unset): 300 examples per property, derandomized, so every run tries
the same inputs and a failure reproduces. A long run draws fresh random inputs:

    FACEWATCH_FUZZ_EXAMPLES=100000 python -m pytest -q -p no:cacheprovider -o timeout=0 \
        tests/stream/test_frames_fuzz.py tests/watchlist/test_replication_fuzz.py tests/test_config_fuzz.py

docs/operations.md ("Fuzzing") has the figures of the last long run.
"""

from __future__ import annotations

import os
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
# Round trips of valid inputs: a tenth of that in a long run (at least the CI count); hostile inputs
# are where the long run's time goes.
fuzz_round_trip = settings(fuzz, max_examples=max(EXAMPLES // 10, min(EXAMPLES, 300)))
# Each example a SQLite transaction: a fiftieth.
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
