"""Per-track decisions: many faces of one tracked person -> at most one FaceMatch per identity.

Each embedded face of a track that is good enough (quality at least ``min_quality`` and at least
``min_face_size`` pixels wide; worker/vision/quality.py) votes for the identity it matched, or for
nobody when it was confidently unknown; an "uncertain" face (near someone, but not safely that
person) abstains, and so does a poor face, which is still tracked and counted. A vote weighs as
much as the face's quality. A track is recognised as identity X once X has at least ``min_faces``
votes and at least ``min_vote_share`` of the weight of the votes cast; the FaceMatch is published
once per track and identity, and not at all if the same identity was announced on the same
camera less than ``cooldown_s`` ago (frame time). When the track ends, a TrackEnded says who it
was, or that it stayed uncertain or unknown (its ``outcome``), for how long, and how many faces voted.
A TrackStarted announces each track at birth, and with ``events.track_update_interval_s`` a
TrackUpdated says where an open track is at most once per interval of frame time, on the frames where
it is detected (off: 0).

The cooldown looks at the camera's announcements of that identity at or before the deciding frame's
time, other than this very event: those this process made, and those ``remember``ed from the
events topic after a restart or a rebalance (worker/stream/cooldowns.py). A replay from the last
committed offset therefore decides as the uninterrupted run did: the announcements before the
replay's start come back from the topic, and the replayed ones, which the topic may already hold
from before a crash, are recognised by their event id and do not hold themselves back.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from worker.config import DecisionsConfig
from worker.stream.events import FaceMatch, TrackEnded, TrackStarted, TrackUpdated, event_id, timestamp
from worker.stream.tracker import Track
from worker.vision.boxes import Box
from worker.vision.image import encode_jpeg
from worker.watchlist.identify import Identification


def median_confidence(confidences: list[float | None]) -> float | None:
    """The median of the faces' calibrated confidences; None when the model has none (a trained embedder.model)."""
    if not confidences or any(c is None for c in confidences):
        return None
    return float(np.clip(np.median(np.asarray(confidences, np.float64)), 0.0, 1.0))


@dataclass
class _Votes:
    distances: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    confidences: list[float | None] = field(default_factory=list)
    weight: float = 0.0


@dataclass
class _TrackState:
    first_seen: float
    last_seen: float
    faces: int = 0
    faces_voted: int = 0  # faces good enough to vote (uncertain ones included: they abstain)
    votes_cast: float = 0.0  # weight of the faces that matched someone or were confidently unknown
    best_score: float | None = None
    best_distance: float | None = None
    best_confidence: float | None = None
    threshold: float | None = None  # the match distance the track's faces were decided against
    near: bool = False  # a voting face matched someone or was uncertain: the outcome is not "unknown"
    updates: int = 0  # TrackUpdated events published
    last_update: float | None = None  # frame time of the last TrackUpdated (or of the birth)
    votes: dict[str, _Votes] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    announced: set[str] = field(default_factory=set)
    decided: str | None = None  # the identity the track was recognised as, announced or not


@dataclass(frozen=True)
class Announcement:
    """A FaceMatch that was published: what a camera's cooldown remembers of it."""

    camera_id: str
    identity_id: str
    frame_time: float  # the frame that completed the decision, Unix seconds
    event_id: str


@dataclass(frozen=True)
class FrameRef:
    """The frame a box is in: what every event with a box says of it."""

    seq: int
    width: int
    height: int
    time: float  # capture time, Unix seconds

    def fields(self) -> dict:
        """The frame fields of an event."""
        return dict(
            frame_seq=self.seq,
            frame_width=self.width,
            frame_height=self.height,
            frame_timestamp=timestamp(self.time),
        )


@dataclass(frozen=True)
class DecisionRules:
    """The knobs of the per-track decision (config section ``decisions``)."""

    min_faces: int = 2
    min_vote_share: float = 0.5
    cooldown_s: float = 60.0
    thumbnails: bool = False
    min_quality: float = 0.0
    min_face_size: int = 0
    weighted: bool = True
    update_interval_s: float = 0.0  # TrackUpdated at most this often per track, frame time; 0: never

    @classmethod
    def from_config(
        cls, config: DecisionsConfig, thumbnails: bool = False, update_interval_s: float = 0.0
    ) -> DecisionRules:
        """The rules of the ``decisions`` section; ``thumbnails`` and ``update_interval_s`` come from ``events``."""
        return cls(
            config.min_faces,
            config.min_vote_share,
            config.cooldown_s,
            thumbnails,
            config.min_quality,
            config.min_face_size,
            config.quality_weighted,
            update_interval_s,
        )

    def can_vote(self, quality: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """Which faces of a batch may vote (the others need no embedding): (N,) bool."""
        return (np.asarray(widths) >= self.min_face_size) & (np.asarray(quality) >= self.min_quality)

    def weight(self, quality: float | None, width: int) -> float:
        """A face's vote weight: 0 when it may not vote, else its quality (1 when unknown or unweighted)."""
        if width < self.min_face_size:
            return 0.0
        if quality is None:
            return 1.0
        if quality < self.min_quality:
            return 0.0
        return max(quality, 1e-3) if self.weighted else 1.0


class TrackDecisions:
    """Decision state of one camera's tracks; called in frame order by the camera's lane."""

    def __init__(self, camera_id: str, rules: DecisionRules, model_version: str) -> None:
        self.camera_id = camera_id
        self.rules = rules
        self.model_version = model_version
        self._tracks: dict[str, _TrackState] = {}
        self._announced: dict[str, dict[str, float]] = {}  # identity -> {event id: frame time}

    def _state(self, track: Track) -> _TrackState:
        state = self._tracks.get(track.track_id)
        if state is None:
            state = self._tracks[track.track_id] = _TrackState(track.born_at, track.born_at)
        return state

    def _header(self, track: Track, subject: str, watchlist_version: int) -> dict:
        return dict(
            event_id=event_id(self.camera_id, track.track_id, subject),
            camera_id=self.camera_id,
            track_id=track.track_id,
            model_version=self.model_version,
            watchlist_version=watchlist_version,
        )

    def started(self, track: Track, frame: FrameRef, watchlist_version: int) -> TrackStarted:
        """The TrackStarted event of a track born in ``frame``."""
        state = self._state(track)
        state.last_update = frame.time
        return TrackStarted(
            **self._header(track, "started", watchlist_version), box=track.box.as_list(), **frame.fields()
        )

    def updated(self, track: Track, box: Box, frame: FrameRef, watchlist_version: int) -> TrackUpdated | None:
        """A TrackUpdated for an open track seen in ``frame``, when update_interval_s has passed since the last."""
        interval = self.rules.update_interval_s
        if interval <= 0:
            return None
        state = self._state(track)
        if state.last_update is not None and frame.time - state.last_update < interval:
            return None
        state.last_update = frame.time
        state.updates += 1
        identity = state.decided
        return TrackUpdated(
            **self._header(track, f"updated-{state.updates}", watchlist_version),
            box=box.as_list(),
            **frame.fields(),
            identity_id=identity,
            identity_name=state.names.get(identity) if identity else None,
            faces=state.faces,
            faces_voted=state.faces_voted,
            started_at=timestamp(state.first_seen),
        )

    def seen(self, track: Track, frame_time: float) -> None:
        """Count a face of a track that was too poor to vote (it was not embedded)."""
        state = self._state(track)
        state.faces += 1
        state.last_seen = frame_time

    def observe(
        self,
        track: Track,
        box: Box,
        frame: FrameRef,
        match: Identification,
        watchlist_version: int,
        chip: np.ndarray | None = None,
        quality: float | None = None,
    ) -> FaceMatch | None:
        """Count one embedded face of a track; returns a FaceMatch when this face completes a decision.

        ``quality`` (0..1, None: not measured) decides whether the face votes and how much.
        """
        frame_time = frame.time
        state = self._state(track)
        state.faces += 1
        state.last_seen = frame_time
        weight = self.rules.weight(quality, box.width)
        if weight == 0.0:
            return None  # tracked and counted, but too poor to vote or to set the best score
        state.faces_voted += 1
        state.threshold = match.threshold
        if match.status != "uncertain":
            state.votes_cast += weight
        if match.status == "unknown":
            return None  # a stranger's similarity to the nearest enrolled person is not reported
        state.near = True
        state.best_score = match.score if state.best_score is None else max(state.best_score, match.score)
        if state.best_distance is None or match.distance < state.best_distance:
            state.best_distance, state.best_confidence = match.distance, match.confidence
        if match.identity_id is None:
            return None
        votes = state.votes.setdefault(match.identity_id, _Votes())
        votes.distances.append(match.distance)
        votes.scores.append(match.score)
        votes.confidences.append(match.confidence)
        votes.weight += weight
        state.names[match.identity_id] = match.name or ""
        identity = match.identity_id
        count = len(votes.distances)
        if identity in state.announced or count < self.rules.min_faces:
            return None
        # A small tolerance: weights are sums of floats, and a share of exactly min_vote_share must pass.
        if votes.weight < self.rules.min_vote_share * state.votes_cast - 1e-9:
            return None
        state.decided = state.decided or identity
        state.announced.add(identity)
        event = event_id(self.camera_id, track.track_id, identity)
        if self._cooling(identity, event, frame_time):
            return None
        self._announced.setdefault(identity, {})[event] = frame_time
        thumbnail = None
        if self.rules.thumbnails and chip is not None:
            thumbnail = base64.b64encode(encode_jpeg(chip, quality=85)).decode("ascii")
        return FaceMatch(
            event_id=event,
            camera_id=self.camera_id,
            track_id=track.track_id,
            model_version=self.model_version,
            watchlist_version=watchlist_version,
            identity_id=identity,
            identity_name=state.names[identity],
            score=float(np.clip(np.mean(votes.scores), 0.0, 1.0)),
            distance=float(np.median(votes.distances)),
            confidence=median_confidence(votes.confidences),
            threshold=match.threshold,
            faces=count,
            faces_voted=state.faces_voted,
            box=box.as_list(),
            **frame.fields(),
            first_seen=timestamp(state.first_seen),
            last_seen=timestamp(frame_time),
            thumbnail_jpeg_base64=thumbnail,
        )

    def _cooling(self, identity: str, event: str, frame_time: float) -> bool:
        """Whether ``identity`` was announced on this camera less than cooldown_s before ``frame_time``."""
        horizon = frame_time - self.rules.cooldown_s
        for who, times in list(self._announced.items()):  # decisions are rare: tidy every identity of the camera
            for old in [key for key, at in times.items() if at <= horizon]:
                del times[old]  # too old to hold anything back at this or any later frame
            if not times:
                del self._announced[who]
        announced = self._announced.get(identity, {})
        # Later announcements are not this decision's past (a replay may read them back from before a crash),
        # and the event itself, read back, must not hold itself back.
        return any(at <= frame_time and key != event for key, at in announced.items())

    def remember(self, announcements: Iterable[Announcement]) -> None:
        """Announcements of this camera published before this process saw its frames (read back from the topic)."""
        for announcement in announcements:
            if announcement.camera_id == self.camera_id:
                self._announced.setdefault(announcement.identity_id, {})[announcement.event_id] = (
                    announcement.frame_time
                )

    def ended(self, track: Track, reason: str, watchlist_version: int) -> TrackEnded:
        """The TrackEnded event of a closed track (its state is dropped)."""
        state = self._tracks.pop(track.track_id, None) or _TrackState(track.born_at, track.last_seen_at)
        ended_at = max(state.last_seen, track.last_seen_at)
        identity = state.decided
        outcome = "matched" if identity else "uncertain" if state.near else "unknown"
        return TrackEnded(
            **self._header(track, "ended", watchlist_version),
            outcome=outcome,
            identity_id=identity,
            identity_name=state.names.get(identity) if identity else None,
            best_score=state.best_score if outcome != "unknown" else None,
            best_distance=state.best_distance if outcome != "unknown" else None,
            best_confidence=state.best_confidence if outcome != "unknown" else None,
            threshold=state.threshold,
            faces=state.faces,
            faces_voted=state.faces_voted,
            started_at=timestamp(state.first_seen),
            ended_at=timestamp(ended_at),
            duration_s=max(0.0, ended_at - state.first_seen),
            reason=reason,  # type: ignore[arg-type]
        )

    def decided(self, track_id: str) -> tuple[str, str] | None:
        """(identity id, name) an open track was recognised as, announced or held back by the cooldown; else None."""
        state = self._tracks.get(track_id)
        if state is None or state.decided is None:
            return None
        return state.decided, state.names.get(state.decided, "")

    def forget_identity(self, identity_id: str) -> None:
        """Erasure: drop every trace of a removed identity from the decision state."""
        self._announced.pop(identity_id, None)
        for state in self._tracks.values():
            state.votes.pop(identity_id, None)
            state.names.pop(identity_id, None)
            state.announced.discard(identity_id)
            if state.decided == identity_id:
                state.decided = None
