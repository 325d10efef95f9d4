"""facewatch: a streaming face-recognition worker (source -> faces -> watchlist -> events)."""

import os
from importlib.metadata import PackageNotFoundError, version

# Process-wide defaults that must be in place before torch or OpenCV load (users may override them):
# - torch's OpenMP threads spin-wait by default, which collapses throughput on busy small machines;
#   FAISS's (its own libgomp) too: at 1M templates ACTIVE searched 1.5x slower than PASSIVE on the
#   loaded 2-core machine (docs/benchmarks.md, "The watchlist's index at 1M");
# - but PASSIVE alone puts torch's helper threads to sleep at the end of every parallel region, and
#   a network of many small layers then pays a wake-up per layer: a short spin first (20,000 rounds,
#   about 0.2 ms) embeds 12% more faces/s in fp32 and 40% more in bf16 at 2 threads, and two such
#   processes sharing 2 cores lose nothing, where 200,000 rounds cut them to a third (docs/benchmarks.md,
#   "The chip's GEMM rate"). It only matters where a torch or FAISS call runs more than one thread:
#   the streaming pipeline runs one per lane;
# - OpenCV would print decoder warnings for every bad image to stderr, where our own one-line
#   errors belong; and it decodes up to 2^30 pixels, far more than any camera frame or photo.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "20000")
os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(64_000_000))

try:
    __version__ = version("facewatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
