"""facewatch: a streaming face-recognition worker (source -> faces -> watchlist -> events)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("facewatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
