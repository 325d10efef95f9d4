"""Public-domain portraits that ship inside PyPI wheels, for the demo, benchmarks and tests.

They are found on disk without importing their packages (importing scikit-image or matplotlib
costs seconds and memory the worker never needs).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from worker.errors import FacewatchError


@dataclass(frozen=True)
class SamplePortrait:
    """A portrait file inside an installed package."""

    name: str
    package: str
    relative_path: str
    credit: str


SAMPLE_PORTRAITS = (
    SamplePortrait(
        "Eileen Collins", "skimage", "data/astronaut.png", "NASA portrait of astronaut Eileen Collins (public domain)"
    ),
    SamplePortrait(
        "Grace Hopper",
        "matplotlib",
        "mpl-data/sample_data/grace_hopper.jpg",
        "US Navy portrait of Rear Admiral Grace Hopper (public domain)",
    ),
)


def sample_path(portrait: SamplePortrait) -> Path:
    """Where the portrait lies; FacewatchError says which package to install if it is missing."""
    spec = importlib.util.find_spec(portrait.package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / portrait.relative_path
        if path.is_file():
            return path
    pip_name = {"skimage": "scikit-image"}.get(portrait.package, portrait.package)
    raise FacewatchError(
        f"sample portrait {portrait.relative_path} not found: install {pip_name} (pip install {pip_name})"
    )


def sample_paths() -> dict[str, Path]:
    """Name -> file of every sample portrait."""
    return {portrait.name: sample_path(portrait) for portrait in SAMPLE_PORTRAITS}
