"""worker/__init__.py: the process-wide defaults it sets before torch, FAISS and OpenCV load."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _environment_after_import(**preset: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | preset
    code = "import json, os, worker; print(json.dumps(dict(os.environ)))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout)


def test_openmp_threads_wait_passively_without_a_spin():
    # A spin before sleeping (GOMP_SPINCOUNT) sped one process up but slowed several sharing the cores
    # 1.4x to 3.5x (docs/benchmarks.md, "OpenMP's wait at two threads"): PASSIVE alone is the default.
    seen = _environment_after_import()
    assert seen["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in seen


def test_a_users_own_openmp_settings_win():
    seen = _environment_after_import(OMP_WAIT_POLICY="ACTIVE", GOMP_SPINCOUNT="20000")
    assert seen["OMP_WAIT_POLICY"] == "ACTIVE" and seen["GOMP_SPINCOUNT"] == "20000"
