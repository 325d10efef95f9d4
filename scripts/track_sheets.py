"""Contact sheets of a video's tracks, for labelling them by eye (worker/evaluation/data/hamilton_tracks.json).

    PYTHONPATH=. python scripts/track_sheets.py ../shared/data/video/short_hamilton_clip.mp4 OUT_DIR

Tracks the video as `facewatch eval cluster --video` does (worker/evaluation/cluster.py: video_tracks,
default settings) and writes OUT_DIR/track-<first frame>-<n>.png per track (up to 6 face crops, each
captioned with its frame) and OUT_DIR/tracks.json (key, track id, faces, first frame and box).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from worker.config import Settings
from worker.evaluation.cluster import video_tracks
from worker.recognition import FaceRecognizer

CELL = 160


def sheet(title: str, crops: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """One row of face crops, each scaled to CELL x CELL and captioned with its frame, under a title."""
    cells = []
    for frame, crop in crops:
        cell = cv2.resize(crop, (CELL, CELL))
        cv2.putText(cell, f"f{frame}", (4, CELL - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1)
        cells.append(cell)
    row = np.concatenate(cells, axis=1)
    head = np.zeros((28, row.shape[1], 3), np.uint8)
    cv2.putText(head, title, (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1)
    return np.concatenate([head, row], axis=0)


def main(video: Path, out: Path) -> None:
    settings = Settings()
    out.mkdir(parents=True, exist_ok=True)
    tracks = video_tracks(FaceRecognizer(settings), video, settings.tracking, crops=6)
    listing = []
    for track in tracks:
        title = f"{track.track_id}  first frame {track.first_frame} box {list(track.first_box)}  {track.faces} faces"
        image = sheet(title, track.crops)
        cv2.imwrite(str(out / f"track-{track.first_frame:04d}-{track.track_id}.png"), image[:, :, ::-1])
        listing.append(
            {"track_id": track.track_id, "first_frame": track.first_frame, "first_box": list(track.first_box),
             "faces": track.faces}
        )  # fmt: skip
    (out / "tracks.json").write_text(json.dumps(listing, indent=1))
    print(f"{len(tracks)} tracks -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
