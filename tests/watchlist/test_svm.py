"""The SVM classifier option on real LFW identities."""

from __future__ import annotations

import numpy as np
import pytest

from worker.config import Settings, load_settings
from worker.errors import WatchlistError
from worker.obs.metrics import Metrics
from worker.recognition import FaceRecognizer
from worker.vision.image import load_image
from worker.watchlist.live import Watchlist
from worker.watchlist.store import DEFAULT_MODEL_VERSION, WatchlistStore
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


def test_the_coupling_among_all_classes_is_scikit_learns(lfw_embeddings):
    train, labels = lfw_embeddings["train"]
    test, _ = lfw_embeddings["test"]
    svm = SvmClassifier().fit(train, labels)
    everyone = np.broadcast_to(np.arange(len(svm.classes)), (len(test), len(svm.classes)))
    ours = svm.probabilities_among(test, everyone)
    # scikit-learn solves the same problem iteratively, to a tolerance of 0.005 / classes.
    np.testing.assert_allclose(ours, svm._svm.predict_proba(test), atol=2e-3)
    assert (ours.argmax(axis=1) == svm._svm.predict_proba(test).argmax(axis=1)).mean() >= 0.95


def test_two_classes_are_coupled_as_scikit_learn_does(lfw_embeddings):
    # scikit-learn stores a two-class SVM's plane negated: the probabilities must not come out inverted.
    train, labels = lfw_embeddings["train"]
    test, expected = lfw_embeddings["test"]
    two = list(dict.fromkeys(labels))[:2]
    rows = [i for i, label in enumerate(labels) if label in two]
    svm = SvmClassifier().fit(train[rows], [labels[i] for i in rows])
    probes = [i for i, name in enumerate(expected) if name in two]
    ours = svm.probabilities_among(test[probes], np.broadcast_to(np.arange(2), (len(probes), 2)))
    np.testing.assert_allclose(ours, svm._svm.predict_proba(test[probes]), atol=1e-3)
    assert [p.candidate_id for p in svm.predict(test[probes])] == [expected[i] for i in probes]


def test_probabilities_among_candidates_count_each_class_once(lfw_embeddings):
    train, labels = lfw_embeddings["train"]
    test, expected = lfw_embeddings["test"]
    svm = SvmClassifier().fit(train, labels)
    candidates = np.array([[3, 3, 1, -1, 0]] * len(test))
    probabilities = svm.probabilities_among(test, candidates)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    assert (probabilities[:, [1, 3]] == 0).all()  # the repeat and the padding
    assert (probabilities[:, [0, 2, 4]] > 0).all()
    # A face whose own class is among the candidates is mostly given to it.
    own = svm.class_positions(np.array(expected, dtype=object))
    among = np.isin(own, [3, 1, 0])
    chosen = np.array([3, 3, 1, -1, 0])[probabilities.argmax(axis=1)]
    assert among.sum() >= 4 and (chosen[among] == own[among]).mean() >= 0.9
    one = svm.probabilities_among(test[:2], np.array([[5, -1], [-1, -1]]))
    assert one.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    ids = np.array([svm.classes[2], None, "not enrolled", svm.classes[0]], dtype=object)
    assert svm.class_positions(ids).tolist() == [2, -1, -1, 0]


def test_two_people_with_one_photo_each_get_no_svm(lfw_embeddings):
    train, labels = lfw_embeddings["train"]
    first = {name: labels.index(name) for name in dict.fromkeys(labels)}
    two = [first[name] for name in list(first)[:2]]
    with pytest.raises(WatchlistError, match="at least 3 templates of every identity"):
        SvmClassifier(min_templates=3).fit(train[two], [labels[i] for i in two])
    rows = [i for i, label in enumerate(labels) if label in list(first)[:2]]  # 4 photos each
    assert len(SvmClassifier(min_templates=3).fit(train[rows], [labels[i] for i in rows]).classes) == 2


def _store_of(path, vectors, labels) -> dict[str, str]:
    ids = {}
    with WatchlistStore(path) as store:
        for name in dict.fromkeys(labels):
            rows = [i for i, label in enumerate(labels) if label == name]
            identity, _ = store.add_identity_with_templates(name, vectors[rows])
            ids[name] = identity.id
    return ids


def test_the_worker_decides_by_svm_open_set(tmp_path, lfw_embeddings):
    """Known people named rightly, strangers named never, by the SVM rule in the worker's watchlist."""
    train, labels = lfw_embeddings["train"]
    test, expected = lfw_embeddings["test"]
    strangers, _ = lfw_embeddings["strangers"]
    path = tmp_path / "w.db"
    ids = _store_of(path, train, labels)
    metrics = Metrics()
    watchlist = Watchlist(Settings(watchlist={"store": str(path), "classifier": "svm"}), DEFAULT_MODEL_VERSION, metrics)
    try:
        assert watchlist.wait_for_svm(120), watchlist.svm_refusal  # trained off the main thread
        assert metrics.watchlist_svm_active._value.get() == 1
        answers = watchlist.identify(test)
        named = [(a.identity_id, ids[e]) for a, e in zip(answers, expected, strict=True) if a.status == "match"]
        assert len(named) >= 0.75 * len(test) and all(got == want for got, want in named)
        assert all(0.3 <= a.confidence <= 1.0 and a.distance <= 0.6 for a in answers if a.status == "match")
        assert all(a.status != "match" for a in watchlist.identify(strangers))  # open set: nobody is named
        # A lowered search checks in fp32 every SVM answer that is not safely unknown: all the known people's,
        # and only the strangers who come that close to someone.
        assert watchlist.fragile(answers, 0.01).all()
        stranger_answers = watchlist.identify(strangers)
        nearest = np.array([min(a.distance, a.runner_up_distance) for a in stranger_answers])
        assert watchlist.fragile(stranger_answers, 0.01).tolist() == (nearest <= 0.61).tolist()
    finally:
        watchlist.close()


def test_the_worker_falls_back_to_the_nearest_rule_and_retrains_on_changes(tmp_path, lfw_embeddings, caplog):
    train, labels = lfw_embeddings["train"]
    first = list(dict.fromkeys(labels))
    one_each = [labels.index(name) for name in first[:2]]  # two people with one photo each
    path = tmp_path / "w.db"
    ids = _store_of(path, train[one_each], [labels[i] for i in one_each])
    metrics = Metrics()
    settings = Settings(watchlist={"store": str(path), "classifier": "svm"})
    watchlist = Watchlist(settings, DEFAULT_MODEL_VERSION, metrics)
    try:
        assert not watchlist.wait_for_svm(120)
        assert watchlist.identifier.classifier is None and metrics.watchlist_svm_active._value.get() == 0
        assert "svm_min_templates" in caplog.text and "nearest template" in caplog.text
        # The nearest rule names each enrolled photo as its own person, never the other.
        own = watchlist.identify(train[one_each])
        assert [a.identity_id for a in own] == [ids[first[0]], ids[first[1]]]

        with WatchlistStore(path) as cli:  # the CLI adds photos until every identity has three
            for name in first[:2]:
                rows = [i for i, label in enumerate(labels) if label == name][1:3]
                cli.add_templates(ids[name], train[rows])
        assert watchlist.follow(lambda _: None)
        assert watchlist.wait_for_svm(120) and metrics.watchlist_svm_active._value.get() == 1
        assert set(watchlist.identifier.classifier.classes) == {ids[first[0]], ids[first[1]]}

        with WatchlistStore(path) as cli:
            cli.remove_identity(ids[first[0]])
        watchlist.follow(lambda _: None)
        # The old SVM stops deciding at once; one identity left, so no new one.
        assert watchlist.identifier.classifier is None and metrics.watchlist_svm_active._value.get() == 0
        assert not watchlist.wait_for_svm(120) and "at least 2 identities" in watchlist.svm_refusal
        rows = [i for i, label in enumerate(labels) if label == first[0]]
        assert all(a.identity_id != ids[first[0]] for a in watchlist.identify(train[rows]))
    finally:
        watchlist.close()
