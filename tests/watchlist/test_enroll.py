"""Enrollment quality gates, near-duplicates, folder import and videos, on real photos and the Hamilton clip."""

from __future__ import annotations

import re
import shutil

import cv2
import numpy as np
import pytest

from worker.config import EnrollmentConfig, load_settings
from worker.errors import WatchlistError
from worker.recognition import FaceRecognizer
from worker.samples import sample_paths
from worker.stream.video_faces import VideoFaceReader
from worker.vision.image import load_image
from worker.watchlist.enroll import Enroller, EnrollRules
from worker.watchlist.store import WatchlistStore


@pytest.fixture(scope="module")
def recognizer():
    return FaceRecognizer(load_settings(None, {}))


@pytest.fixture
def store(tmp_path):
    with WatchlistStore(tmp_path / "w.db") as s:
        yield s


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The portraits, plus a blurred, a shrunken and a faceless image made from them."""
    folder = tmp_path_factory.mktemp("photos")
    hopper = sample_paths()["Grace Hopper"]
    image = cv2.cvtColor(load_image(hopper), cv2.COLOR_RGB2BGR)
    made = {"hopper": hopper, "collins": folder / "collins.png"}
    astronaut = cv2.cvtColor(load_image(sample_paths()["Eileen Collins"]), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(made["collins"]), astronaut[:300, 60:380])  # HOG also "finds" a face in her badge below
    made["blurred"] = folder / "blurred.png"
    cv2.imwrite(str(made["blurred"]), cv2.GaussianBlur(image, (0, 0), 8))  # still detected, but very soft
    made["tiny"] = folder / "tiny.png"  # a face about 30 px wide: still found
    cv2.imwrite(str(made["tiny"]), cv2.resize(image, None, fx=0.15, fy=0.15, interpolation=cv2.INTER_AREA))
    made["blank"] = folder / "blank.png"
    cv2.imwrite(str(made["blank"]), np.full((200, 200, 3), 127, np.uint8))
    made["text"] = folder / "notes.jpg"
    made["text"].write_text("not a photo")
    made["flipped"] = folder / "hopper_flipped.jpg"
    cv2.imwrite(str(made["flipped"]), cv2.resize(image[:, ::-1], None, fx=0.8, fy=0.8))
    return made


def test_quality_gates_reject_with_reasons(recognizer, store, photos):
    paths = [photos[k] for k in ("hopper", "blurred", "tiny", "blank", "text")]
    report = Enroller(recognizer, store).enroll("Grace Hopper", paths, {"rank": "admiral"})
    assert [a.path for a in report.accepted] == [str(photos["hopper"])]
    reasons = {r.path: r.reason for r in report.rejected}
    assert reasons[str(photos["blurred"])].startswith("too blurry")
    assert reasons[str(photos["tiny"])].startswith("face too small")
    assert reasons[str(photos["blank"])] == "no face"
    assert reasons[str(photos["text"])].startswith("unreadable")
    assert 0 < report.accepted[0].quality <= 1
    identity = store.get_identity(report.identity.id)
    assert identity.name == "Grace Hopper" and identity.metadata == {"rank": "admiral"} and identity.templates == 1
    (template,) = store.templates(identity.id)
    assert template.source == str(photos["hopper"]) and template.model_version == recognizer.embedder.model_version
    assert report.as_dict()["rejected"][0]["reason"]


def test_several_faces_rejected_unless_largest(recognizer, store, shared_dir):
    two = shared_dir / "data" / "stills" / "two_people.jpg"
    report = Enroller(recognizer, store).enroll("Someone", [two])
    assert report.identity is None and report.rejected[0].reason.startswith("2 faces")
    assert store.stats()["identities"] == 0  # nothing accepted: no empty identity left behind
    report = Enroller(recognizer, store, EnrollRules(largest=True)).enroll("Someone", [two])
    widths = sorted(box.width for box in recognizer.detect([load_image(two)])[0])
    assert len(report.accepted) == 1 and report.accepted[0].box.width == widths[-1]  # the larger of the two faces


def test_near_duplicates_are_skipped(recognizer, store, photos):
    enroller = Enroller(recognizer, store)
    report = enroller.enroll("Grace Hopper", [photos["hopper"], photos["hopper"]])
    assert len(report.accepted) == 1 and report.rejected[0].reason.startswith("near-duplicate")
    again = enroller.enroll("ignored", [photos["hopper"], photos["flipped"]], identity_id=report.identity.id)
    assert again.name == "Grace Hopper"
    assert [a.path for a in again.accepted] == [str(photos["flipped"])]  # another photo, not a duplicate
    assert [r.reason.split(" ")[0] for r in again.rejected] == ["near-duplicate"]
    assert store.get_identity(report.identity.id).templates == 2


def test_import_tree_reports_every_rejection(recognizer, store, photos, tmp_path):
    root = tmp_path / "people"
    (root / "Grace_Hopper").mkdir(parents=True)
    (root / "Eileen_Collins").mkdir()
    (root / "Nobody").mkdir()
    shutil.copy(photos["hopper"], root / "Grace_Hopper" / "a.jpg")
    shutil.copy(photos["flipped"], root / "Grace_Hopper" / "b.jpg")
    shutil.copy(photos["blank"], root / "Grace_Hopper" / "c.png")
    (root / "Grace_Hopper" / "readme.txt").write_text("x")
    shutil.copy(photos["collins"], root / "Eileen_Collins" / "a.png")
    (root / "stray.jpg").write_text("x")
    reports = {r.name: r for r in Enroller(recognizer, store).import_tree(root)}
    assert set(reports) == {"Grace Hopper", "Eileen Collins", "Nobody", "(root)"}
    assert len(reports["Grace Hopper"].accepted) == 2 and len(reports["Eileen Collins"].accepted) == 1
    reasons = sorted(r.reason for r in reports["Grace Hopper"].rejected)
    assert reasons == ["no face", "not a photo or video (by its extension)"]
    assert reports["Nobody"].rejected[0].reason == "folder has no photos" and reports["Nobody"].identity is None
    assert reports["(root)"].rejected[0].reason == "not in a person's folder"
    assert sorted(i.name for i in store.list_identities()) == ["Eileen Collins", "Grace Hopper"]
    # Importing again adds nothing: every photo is now a near-duplicate of the same name's templates.
    version = store.version
    again = {r.name: r for r in Enroller(recognizer, store).import_tree(root)}
    assert not again["Grace Hopper"].accepted and store.version == version
    with pytest.raises(WatchlistError, match="not a folder"):
        Enroller(recognizer, store).import_tree(root / "stray.jpg")
    with pytest.raises(WatchlistError, match="no sub-folders"):
        Enroller(recognizer, store).import_tree(root / "Nobody")


def test_rules_come_from_the_config_section():
    assert EnrollRules.from_config(EnrollmentConfig()) == EnrollRules()  # one set of defaults
    assert set(EnrollRules.__dataclass_fields__) == set(EnrollmentConfig.model_fields)
    settings = load_settings(None, {"enrollment": {"min_sharpness": 7, "largest": True, "video_faces": 2}})
    rules = EnrollRules.from_config(settings.enrollment)
    assert (rules.min_sharpness, rules.largest, rules.video_faces) == (7.0, True, 2)
    assert rules.min_face_size == EnrollmentConfig().min_face_size


def test_each_rejection_names_the_flag_that_admits_it(recognizer, store, photos, shared_dir):
    enroller = Enroller(recognizer, store)
    report = enroller.enroll("Grace Hopper", [photos["blurred"], photos["tiny"]])
    assert report.identity is None
    blurred, tiny = report.rejected
    match = re.fullmatch(r"too blurry \(sharpness ([\d.]+), minimum [\d.]+\): --min-sharpness ([\d.]+) would admit it",
                         blurred.reason)  # fmt: skip
    assert match and match.group(1) == match.group(2) and blurred.admit == f"--min-sharpness {match.group(1)}"
    (tiny_box,) = recognizer.detect([load_image(photos["tiny"])])[0]
    width = tiny_box.width
    assert tiny.reason.startswith(f"face too small ({width} px wide") and tiny.admit == f"--min-face-size {width}"
    # The suggested settings admit them, and nothing else changes.
    sharp = float(match.group(1))
    report = Enroller(recognizer, store, EnrollRules(min_sharpness=sharp, min_face_size=width)).enroll(
        "Grace Hopper", [photos["blurred"], photos["tiny"]]
    )
    assert sorted(a.path for a in report.accepted) == sorted([str(photos["blurred"]), str(photos["tiny"])])
    assert min(a.quality for a in report.accepted) < 0.1  # admitted, but known to be poor

    (two,) = enroller.enroll("Someone", [shared_dir / "data" / "stills" / "two_people.jpg"]).rejected
    assert two.admit == "--largest" and two.reason.endswith("--largest would take the largest")

    first = enroller.enroll("Grace Hopper", [photos["hopper"]])
    (again,) = enroller.enroll("x", [photos["hopper"]], identity_id=first.identity.id).rejected
    assert again.reason == "near-duplicate (distance 0.000): --duplicate-distance 0 would admit it"
    admitted = Enroller(recognizer, store, EnrollRules(duplicate_distance=0)).enroll(
        "x", [photos["hopper"]], identity_id=first.identity.id
    )
    assert len(admitted.accepted) == 1


@pytest.fixture(scope="module")
def clip(shared_dir):
    return shared_dir / "data" / "video" / "short_hamilton_clip.mp4"


def test_video_gives_the_best_faces_of_its_dominant_track(recognizer, store, clip, shared_dir):
    rules = EnrollRules(video_frames=40, video_faces=4)
    enroller = Enroller(recognizer, store, rules, video_reader=VideoFaceReader(recognizer))
    report = enroller.enroll("Lin-Manuel Miranda", [clip])
    assert report.rejected == [] and len(report.accepted) == 4
    (video,) = report.videos
    assert video.source == str(clip) and video.frames == 40 and video.tracks[0] >= video.usable >= 4
    times = sorted(float(a.path.rsplit("#t=", 1)[1]) for a in report.accepted)
    assert all(a.path.startswith(f"{clip}#t=") for a in report.accepted)
    # Spread over the track: no two closer than an eighth (1 / (2 * video_faces)) of its time span.
    assert video.end - video.start > 1.0 and min(np.diff(times)) >= (video.end - video.start) / 8
    templates = np.stack([t.embedding for t in store.templates(report.identity.id)])
    pairwise = np.linalg.norm(templates[:, None] - templates[None], axis=2)[np.triu_indices(4, 1)]
    assert pairwise.min() >= rules.duplicate_distance
    # They are Miranda: each is nearer his still than dlib's same-person threshold.
    still = recognizer.analyze([load_image(shared_dir / "data" / "stills" / "lin-manuel-miranda.png")])[0]
    assert np.linalg.norm(templates - still.embeddings[0], axis=1).max() < 0.6

    # The same clip again adds nothing: the same faces are picked, each a duplicate of a template.
    again = enroller.enroll("ignored", [clip], identity_id=report.identity.id)
    assert not again.accepted and {r.reason.split(" ")[0] for r in again.rejected} == {"near-duplicate"}


def test_video_whose_faces_all_fail_says_what_would_admit_the_best(recognizer, store, clip):
    rules = EnrollRules(video_frames=30, min_sharpness=10_000)
    report = Enroller(recognizer, store, rules, video_reader=VideoFaceReader(recognizer)).enroll("LMM", [clip])
    (rejected,) = report.rejected
    assert report.identity is None and rejected.path == str(clip)
    assert re.fullmatch(
        r"none of the \d+ faces of its main track passes the gates; the best: too blurry \(sharpness \d+, "
        r"minimum 10000\): --min-sharpness \d+ would admit it",
        rejected.reason,
    ), rejected.reason
    assert rejected.admit and rejected.admit.startswith("--min-sharpness ")


def test_videos_need_a_reader(recognizer, store, clip):
    (rejected,) = Enroller(recognizer, store).enroll("LMM", [clip]).rejected
    assert rejected.reason.startswith("videos are not read here")
