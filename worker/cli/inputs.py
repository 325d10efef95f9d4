"""The image arguments of the per-image commands: files as given, folders searched recursively for images."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from worker.watchlist.enroll import IMAGE_SUFFIXES


@dataclass
class ImageCounts:
    """What a per-image command went through, for its closing summary line."""

    images: int = 0
    faces: int = 0
    no_face: int = 0
    unreadable: int = 0
    skipped: int = 0  # files in the given folders that are not images (by suffix)

    def summary(self, command: str) -> str:
        """One line: ``detect: 12 images, 15 faces, 2 without a face, 1 unreadable``."""
        text = (
            f"{command}: {self.images} image{'' if self.images == 1 else 's'}, {self.faces} "
            f"face{'' if self.faces == 1 else 's'}, {self.no_face} without a face, {self.unreadable} unreadable"
        )
        if self.skipped:
            text += f", {self.skipped} other file{'' if self.skipped == 1 else 's'} in the folders skipped"
        return text


@dataclass
class ImageArguments:
    """The images the arguments name, in order, and the files skipped in folders."""

    paths: list[str] = field(default_factory=list)
    skipped: int = 0


def image_paths(arguments: list[str]) -> ImageArguments:
    """Expand each folder argument to the image files under it (recursively, sorted); files stay as given.

    A file named on the command line is always tried, whatever its suffix (it may be an image with
    an odd name); inside folders only files with an image suffix are taken, so a folder of photos
    with a README or a video beside them works. A missing path stays in the list: loading it gives
    its one-line error.
    """
    found = ImageArguments()
    for argument in arguments:
        path = Path(argument)
        if not path.is_dir():
            found.paths.append(argument)
            continue
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                found.paths.append(str(file))
            else:
                found.skipped += 1
    return found


def print_summary(counts: ImageCounts, command: str) -> None:
    """The summary line on stderr (stdout holds only the JSON records)."""
    print(counts.summary(command), file=sys.stderr, flush=True)
