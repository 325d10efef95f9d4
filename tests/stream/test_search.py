"""The batched search step on real faces and dlib's real network: bf16 where it is safe, fp32 where it is close."""

from __future__ import annotations

import numpy as np
import pytest

from tests.realdata import hog_faces
from worker.embed.embedder import FaceEmbedder
from worker.runtime.device import cpu_has_bf16
from worker.stream.search import CheckedSearch
from worker.vision.align import dlib_chips
from worker.watchlist.identify import Identifier
from worker.watchlist.index import WatchlistIndex
from worker.watchlist.store import WatchlistStore


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    return np.concatenate([dlib_chips(image, shapes) for image, shapes in hog_faces(lfw_people=30)])


def test_without_a_check_the_step_is_embed_then_identify(tmp_path, chips):
    embedder = FaceEmbedder(device="cpu")
    with WatchlistStore(tmp_path / "w.db") as store:
        person = store.add_identity("First face")
        store.add_templates(person.id, embedder.embed(chips[:1]))
        identifier = Identifier(store, WatchlistIndex.build(store, "exact"))
        calls: list[int] = []
        search = CheckedSearch(embedder.embed, identifier.identify, embedder.embed_exact, identifier.fragile, 0.0)
        search.on_recheck = calls.append
        embeddings, answers = search(chips)
        assert np.array_equal(embeddings, embedder.embed(chips)) and calls == []  # band 0: no check at all
        assert answers[0].status == "match" and answers[0].name == "First face"
        assert [a.status for a in answers] == [a.status for a in identifier.identify(embeddings)]


def test_close_decisions_are_fp32_decisions_and_only_they_pay_for_it(tmp_path, chips):
    """A threshold set between a probe's fp32 and bf16 distances: bf16 alone decides that face otherwise;
    the checked search gives fp32's answer for it, and embeds again only the faces near a threshold."""
    if not cpu_has_bf16():
        pytest.skip("this CPU has no bfloat16 units (amx_bf16 or avx512_bf16): the search runs fp32 on it")
    embedder = FaceEmbedder(device="cpu", precision="auto")
    assert embedder.lowered
    exact, low = embedder.embed_exact(chips), embedder.embed_search(chips)
    with WatchlistStore(tmp_path / "w.db") as store:
        person = store.add_identity("First face")
        store.add_templates(person.id, exact[:1])  # templates are fp32 under auto
        d_exact = np.linalg.norm(exact - exact[0], axis=1)
        d_low = np.linalg.norm(low - exact[0], axis=1)
        probe = 1 + int(np.argmax(np.abs(d_exact - d_low)[1:]))
        assert abs(d_exact[probe] - d_low[probe]) > 1e-4
        match = float(d_exact[probe] + d_low[probe]) / 2
        identifier = Identifier(store, WatchlistIndex.build(store, "exact"), match, match + 0.05)
        fp32_answers = identifier.identify(exact)

        _, plain = CheckedSearch(embedder.embed_search, identifier.identify)(chips)
        assert plain[probe].status != fp32_answers[probe].status  # bf16 alone flips this face

        counts: list[int] = []
        search = CheckedSearch(
            embedder.embed_search, identifier.identify, embedder.embed_exact, identifier.fragile, 0.01, counts.append
        )
        embeddings, answers = search(chips)
        assert [a.status for a in answers] == [a.status for a in fp32_answers]
        rechecked = identifier.fragile(identifier.identify(low), 0.01)
        assert rechecked[probe] and not rechecked[0] and counts == [int(rechecked.sum())]
        # fp32 itself varies by about 1e-7 with the batch's size (oneDNN picks its kernels by shape)
        assert np.allclose(embeddings[rechecked], exact[rechecked], atol=1e-5)
        assert np.array_equal(embeddings[~rechecked], low[~rechecked])  # the rest kept their bf16 descriptors


@pytest.mark.parametrize(
    ("precision", "visitors", "checked"),
    [("auto", False, True), ("auto", True, False), ("bf16", False, False), ("fp32", False, False)],
)
def test_the_pipeline_lowers_and_checks_only_under_auto(tmp_path, precision, visitors, checked):
    """auto lowers the search and checks it; an explicit bf16 runs unchecked everywhere; visitors (which cluster
    every descriptor) keep the search at embed's precision."""
    from worker.config import Settings
    from worker.obs.metrics import Metrics
    from worker.recognition import FaceRecognizer
    from worker.stream.pipeline import Pipeline
    from worker.watchlist.live import Watchlist

    if precision != "fp32" and not cpu_has_bf16():
        pytest.skip("this CPU has no bfloat16 units (amx_bf16 or avx512_bf16): auto is fp32 and bf16 is refused")
    settings = Settings(embedder={"device": "cpu", "precision": precision}, watchlist={"store": str(tmp_path / "w.db")})
    recognizer, metrics = FaceRecognizer(settings), Metrics()
    watchlist = Watchlist(settings, recognizer.embedder.model_version, metrics)
    pipeline = Pipeline.from_settings(
        settings,
        recognizer,
        watchlist,
        [],
        metrics,
        visitors=(lambda track: None) if visitors else None,
    )
    try:
        embedder = recognizer.embedder
        assert (pipeline.search.embed_exact is not None) is checked
        expected = embedder.embed_search if checked else embedder.embed
        assert pipeline.search.embed == expected
        assert embedder.precision == ("bf16" if precision == "bf16" else "fp32")
    finally:
        pipeline.close(10)
        watchlist.close()
