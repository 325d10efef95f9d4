"""The interface of a frame source."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

from worker.stream.frames import Frame

log = logging.getLogger(__name__)
Deliver = Callable[[Frame], None]


class FrameSource(ABC):
    """Produces frames on a thread of its own and hands each to ``deliver`` (which may block)."""

    name: str

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.finished = threading.Event()  # set when the source has no more frames (end of a file)

    @property
    @abstractmethod
    def connected(self) -> bool:
        """Whether the source is currently delivering (for readiness)."""

    @abstractmethod
    def _run(self, deliver: Deliver) -> None:
        """The source's loop; returns when stopped or exhausted."""

    def start(self, deliver: Deliver) -> None:
        """Start the source's thread."""

        def run() -> None:
            try:
                self._run(deliver)
            except Exception:  # a bug here must be loud; the worker reports the source as ended
                log.exception("source %s failed", self.name)
            finally:
                self.finished.set()

        self._thread = threading.Thread(target=run, name=f"source-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the source to stop and wait for its thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()
