"""Enrollment quality gates, near-duplicates and folder import, on real photos."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from worker.config import load_settings
from worker.errors import WatchlistError
from worker.recognition import FaceRecognizer
from worker.samples import sample_paths
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
    cv2.imwrite(str(made["blurred"]), cv2.GaussianBlur(image, (0, 0), 4))  # still detected, but soft
    made["tiny"] = folder / "tiny.png"
    cv2.imwrite(str(made["tiny"]), cv2.resize(image, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA))
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
    assert len(report.accepted) == 1 and report.accepted[0].box.width > 170  # the larger of the two faces


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
    assert reasons == ["no face", "not an image file (by its extension)"]
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
