"""The SVM classifier option on real LFW identities."""

from __future__ import annotations

import numpy as np
import pytest

from worker.config import load_settings
from worker.errors import WatchlistError
from worker.recognition import FaceRecognizer
from worker.vision.image import load_image
from worker.watchlist.store import WatchlistStore
from worker.watchlist.svm import SvmClassifier


@pytest.fixture(scope="module")
def lfw_embeddings(shared_dir):
    """8 people with 6+ photos: 4 to train and 2 to test each; 12 one-photo strangers."""
    folders = sorted((shared_dir / "data" / "lfw" / "images").iterdir())
    photos = {f.name: sorted(f.glob("*.jpg")) for f in folders}
    known = [name for name in sorted(photos) if len(photos[name]) >= 6][:8]
    strangers = [name for name in sorted(photos) if len(photos[name]) == 1][:12]
    recognizer = FaceRecognizer(load_settings(None, {}))

    def embed(paths):
        faces = recognizer.analyze([load_image(p) for p in paths])
        return [(f.embeddings[f.largest()] if f.boxes else None) for f in faces]

    data = {"train": ([], []), "test": ([], []), "strangers": ([], [])}
    for name in known:
        for j, vector in enumerate(embed(photos[name][:6])):
            if vector is not None:
                part = data["train" if j < 4 else "test"]
                part[0].append(vector)
                part[1].append(name)
    for name, vector in zip(strangers, embed([photos[n][0] for n in strangers]), strict=True):
        if vector is not None:
            data["strangers"][0].append(vector)
            data["strangers"][1].append(name)
    return {key: (np.array(vectors), labels) for key, (vectors, labels) in data.items()}


def test_svm_names_known_people_and_rejects_strangers(lfw_embeddings):
    train, labels = lfw_embeddings["train"]
    test, expected = lfw_embeddings["test"]
    strangers, _ = lfw_embeddings["strangers"]
    assert len(train) >= 28 and len(test) >= 14 and len(strangers) >= 10
    svm = SvmClassifier(threshold=0.4).fit(train, labels)
    predictions = svm.predict(test)
    assert np.mean([p.candidate_id == e for p, e in zip(predictions, expected, strict=True)]) >= 0.9
    matched = [p for p in predictions if p.identity_id is not None]
    assert len(matched) >= 0.6 * len(test) and all(p.identity_id == p.candidate_id for p in matched)
    assert np.mean([p.identity_id == e for p, e in zip(predictions, expected, strict=True)]) >= 0.6
    unknown = [p.identity_id is None for p in svm.predict(strangers)]
    assert np.mean(unknown) >= 0.9  # a stranger's probability stays under the threshold
    assert all(0.0 <= p.probability <= 1.0 for p in predictions)


def test_svm_from_store_and_its_limits(tmp_path, lfw_embeddings):
    train, labels = lfw_embeddings["train"]
    with WatchlistStore(tmp_path / "w.db") as store:
        first = store.add_identity(labels[0])
        store.add_templates(first.id, train[[i for i, label in enumerate(labels) if label == labels[0]]])
        with pytest.raises(WatchlistError, match="at least 2 identities"):
            SvmClassifier.from_store(store)
        ids = {labels[0]: first.id}
        for name in dict.fromkeys(labels):
            if name not in ids:
                person = store.add_identity(name)
                store.add_templates(person.id, train[[i for i, label in enumerate(labels) if label == name]])
                ids[name] = person.id
        svm = SvmClassifier.from_store(store)
        assert svm.version == store.version and set(svm.classes) == set(ids.values())
        test, expected = lfw_embeddings["test"]
        hits = [p.candidate_id == ids[e] for p, e in zip(svm.predict(test), expected, strict=True)]
        assert np.mean(hits) >= 0.9
    with pytest.raises(WatchlistError, match="threshold"):
        SvmClassifier(threshold=1.5)
    with pytest.raises(WatchlistError, match="fit it"):
        SvmClassifier().predict(train[:1])
