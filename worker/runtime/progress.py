"""Progress bars that only a person at a terminal sees.

tqdm redraws its bar with carriage returns; written into a log file or a CI capture they pile up
as one long line of partial bars. Every bar in facewatch comes from ``progress_bar``, which draws
nothing unless asked to (``enabled``, i.e. no ``--quiet``) *and* stderr is a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def stderr_is_terminal() -> bool:
    """True when stderr is an interactive terminal (not a file, a pipe or a capture)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def progress_bar(iterable: Iterable[T] | None = None, *, enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on stderr, disabled unless ``enabled`` and stderr is a terminal (same arguments as tqdm)."""
    return tqdm(iterable, disable=not (enabled and stderr_is_terminal()), file=sys.stderr, **options)
