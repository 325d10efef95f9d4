"""Stand-ins for the models in tests of the stream's own logic (threads, ordering, commits).

The real models run in the end-to-end tests (tests/stream/test_runner.py); here a "detector"
returns boxes the test planned, and "identify" says who each chip is by its pixel value, so a
test knows exactly which events must come out.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future

import numpy as np

from worker.models.face_spec import CHIP_SIZE, EMBEDDING_SIZE
from worker.obs.metrics import Metrics
from worker.stream.sinks import Event, EventSink
from worker.vision.boxes import Box
from worker.watchlist.identify import Identification


def frame_image(faces: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A frame whose top-left pixel says how many faces the planned detector finds in it."""
    image = np.zeros((height, width, 3), np.uint8)
    image[0, 0, 0] = faces
    return image


def planned_detect(image: np.ndarray) -> list[Box]:
    """``image[0, 0, 0]`` faces side by side, 40 px wide (always at the same places: tracks continue)."""
    return [Box(10 + 60 * i, 50, 49 + 60 * i, 89, 1.0) for i in range(int(image[0, 0, 0]))]


def chips_by_position(image: np.ndarray, boxes: list[Box]) -> tuple[np.ndarray, np.ndarray]:
    """(frontal 5-point landmarks, one chip per box filled with the face's index): identify reads it back."""
    chips = np.zeros((len(boxes), CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    landmarks = np.zeros((len(boxes), 5, 2), np.float32)
    for row, box in enumerate(boxes):
        chips[row] = box.left // 60
        cx = (box.left + box.right) / 2
        landmarks[row] = [(cx + 12, 60), (cx + 4, 60), (cx - 12, 60), (cx - 4, 60), (cx, 75)]
    return landmarks, chips


def embed_mean(chips: np.ndarray) -> np.ndarray:
    """An 'embedding' whose first value is the chip's fill value."""
    out = np.zeros((len(chips), EMBEDDING_SIZE), np.float32)
    out[:, 0] = chips.reshape(len(chips), -1).mean(axis=1)
    return out


class PlannedWatchlist:
    """Face i is identity ``id-i`` unless erased; thread-safe, like the real identifier."""

    def __init__(self) -> None:
        self.version = 1
        self.erased: set[str] = set()
        self._lock = threading.Lock()

    def erase(self, identity_id: str) -> int:
        with self._lock:
            self.erased.add(identity_id)
            self.version += 1
            return self.version

    def identify(self, embeddings: np.ndarray) -> list[Identification]:
        with self._lock:
            erased, version = set(self.erased), self.version
        results = []
        for value in embeddings[:, 0]:
            identity = f"id-{round(value)}"
            known = identity not in erased
            results.append(
                Identification(
                    status="match" if known else "unknown",
                    identity_id=identity if known else None,
                    name=identity.upper() if known else None,
                    score=0.95 if known else 0.0,
                    distance=0.3 if known else math.inf,
                    candidate_id=identity if known else None,
                    candidate_name=identity.upper() if known else None,
                    runner_up_distance=math.inf,
                    watchlist_version=version,
                )
            )
        return results


def identified(identify, chips: np.ndarray) -> Future:
    """A finished Future as the batcher gives: (embeddings, identifications)."""
    future: Future = Future()
    embeddings = embed_mean(chips)
    future.set_result((embeddings, identify(embeddings)))
    return future


class ListSink(EventSink):
    """Keeps the events it is given, in order (a real EventSink: delivery metrics are counted)."""

    name = "list"

    def __init__(self, metrics: Metrics | None = None) -> None:
        super().__init__(metrics or Metrics())
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def publish(self, event: Event, frame_received: float) -> None:
        with self._lock:
            self.events.append(event)
        self._delivered(event, frame_received)

    def flush(self, timeout: float = 30.0) -> bool:
        return True
