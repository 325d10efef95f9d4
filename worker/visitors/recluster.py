"""`facewatch visitors recluster`: re-cluster the stored tracks globally and say what changed.

The online clusterer sees each track once, in arrival order; Chinese whispers over every track of
a window sees them all at once. The comparison counts visitors before and after, the tracks that
would move, old visitors that would merge into one and those that would split. ``apply`` writes
the new labelling: each new cluster keeps the old id most of its tracks had (so reports and
earlier events stay valid), or gets a new random id.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from worker.visitors.cluster import chinese_whispers
from worker.visitors.store import TrackRow, VisitorRow, VisitorStore


@dataclass(frozen=True)
class Reclustering:
    """The old and new visitor of every track of the window, and the summary of the change."""

    tracks: list[TrackRow]
    new_ids: list[str]
    summary: dict


def recluster(tracks: Sequence[TrackRow], threshold: float, seed: int = 0) -> Reclustering:
    """Chinese whispers over the tracks' embeddings; new ids follow the old ones where most tracks agree."""
    tracks = list(tracks)
    if not tracks:
        empty = {"tracks": 0, "visitors_before": 0, "visitors_after": 0, "tracks_moved": 0, "merged": 0, "split": 0}
        return Reclustering([], [], empty)
    labels = chinese_whispers(np.stack([t.embedding for t in tracks]), threshold, seed=seed)
    old = [t.visitor_id for t in tracks]
    # Each new cluster takes the old id most of its tracks carry, biggest clusters choosing first.
    names: dict[int, str] = {}
    taken: set[str] = set()
    for label in sorted(set(labels.tolist()), key=lambda c: -int((labels == c).sum())):
        votes = Counter(old[i] for i in np.flatnonzero(labels == label))
        choice = next((v for v, _ in votes.most_common() if v not in taken), None)
        names[label] = choice or uuid.uuid4().hex
        taken.add(names[label])
    new_ids = [names[int(label)] for label in labels]
    clusters_of_old: dict[str, set[str]] = {}
    olds_of_new: dict[str, set[str]] = {}
    for before, after in zip(old, new_ids, strict=True):
        clusters_of_old.setdefault(before, set()).add(after)
        olds_of_new.setdefault(after, set()).add(before)
    summary = {
        "tracks": len(tracks),
        "visitors_before": len(set(old)),
        "visitors_after": len(set(new_ids)),
        "tracks_moved": sum(a != b for a, b in zip(old, new_ids, strict=True)),
        "merged": sum(len(olds) - 1 for olds in olds_of_new.values() if len(olds) > 1),
        "split": sum(len(news) - 1 for news in clusters_of_old.values() if len(news) > 1),
        "threshold": threshold,
    }
    return Reclustering(tracks, new_ids, summary)


def apply(store: VisitorStore, result: Reclustering) -> None:
    """Write a re-clustering of every stored track: tracks relabelled, visitors rebuilt, visits follow."""
    mapping = {(t.camera, t.track_id): new for t, new in zip(result.tracks, result.new_ids, strict=True)}
    rows: dict[str, list[TrackRow]] = {}
    for track, new in zip(result.tracks, result.new_ids, strict=True):
        rows.setdefault(new, []).append(track)
    visitors = [
        VisitorRow(
            visitor_id,
            min(t.started for t in tracks),
            max(t.ended for t in tracks),
            np.sum([t.embedding.astype(np.float64) for t in tracks], axis=0),
            float(len(tracks)),
            len(tracks),
        )
        for visitor_id, tracks in rows.items()
    ]
    # A visit follows the new visitor most of its old visitor's tracks went to.
    majority: dict[str, Counter] = {}
    for track, new in zip(result.tracks, result.new_ids, strict=True):
        majority.setdefault(track.visitor_id, Counter())[new] += 1
    visits = {old: counts.most_common(1)[0][0] for old, counts in majority.items()}
    store.relabel(mapping, visitors, visits)
