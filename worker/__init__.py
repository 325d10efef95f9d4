"""facewatch: a streaming face-recognition worker (source -> faces -> watchlist -> events)."""

import os
from importlib.metadata import PackageNotFoundError, version

# Process-wide defaults that must be in place before torch or OpenCV load (users may override them):
# - torch's OpenMP threads spin-wait by default, which collapses throughput on busy small machines;
#   FAISS's (its own libgomp) too: at 1M templates ACTIVE searched 1.5x slower than PASSIVE on the
#   loaded 2-core machine (docs/benchmarks.md, "The watchlist's index at 1M");
#   a short spin first (GOMP_SPINCOUNT=20000) embeds 12% more faces/s at 2 threads in one process,
#   but made three worker processes sharing 2 cores 1.4x to 3.5x slower (docs/benchmarks.md, "OpenMP's wait
#   at two threads"), so it is left to users with a machine to themselves;
# - OpenCV would print decoder warnings for every bad image to stderr, where our own one-line
#   errors belong; and it decodes up to 2^30 pixels, far more than any camera frame or photo.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(64_000_000))

try:
    __version__ = version("facewatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
