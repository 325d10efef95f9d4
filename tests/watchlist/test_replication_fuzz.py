"""Fuzzing the replication record decoder (hypothesis): only WatchlistError comes out; records round-trip.

A replica reads records from a Kafka topic: anyone who can write to it can send any bytes. A
record that decodes must also be one the store takes, so apply_record (real SQLite store) is
fuzzed too. tests/fuzzing.py says how long a run is.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzzing import fuzz, fuzz_store, fuzz_structured, mutate, random_json, tried
from worker.errors import WatchlistError
from worker.watchlist.replication import RECORD_FORMAT, RECORD_VERSION, apply_record, decode_identity, encode_record
from worker.watchlist.store import Identity, Template, WatchlistStore

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
# From a seed and a scale: drawing 128 floats one by one made each example 50 times slower.
embeddings = st.tuples(st.integers(0, 2**32 - 1), st.sampled_from([1e-30, 1.0, 1e30])).map(
    lambda seed: (np.random.default_rng(seed[0]).normal(size=128) * seed[1]).astype(np.float32)
)
unicode_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
names = unicode_text.filter(lambda s: bool(s.strip()))


def _b64(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode("ascii")


@st.composite
def templates(draw: st.DrawFn) -> dict:
    return {
        "embedding": _b64(draw(embeddings)),
        "source": draw(st.one_of(st.none(), unicode_text)),
        "quality": draw(st.one_of(st.none(), st.floats(0, 1))),
        "model_version": "dlib_face_recognition_resnet_model_v1",
    }


@st.composite
def near_valid_records(draw: st.DrawFn) -> dict:
    """A valid record with some fields replaced by any JSON value, or removed."""
    record = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "id": draw(names.filter(lambda s: len(s) <= 128)),
        "name": draw(names),
        "metadata": draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)),
        "templates": draw(st.lists(templates(), max_size=3)),
    }
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from([*record, "templates[0]", "templates[0].embedding", "templates[0].quality"]))
        replacement = draw(
            st.one_of(
                json_values,
                st.sampled_from(["", " ", "%%", _b64(np.zeros(127)), _b64(np.full(128, np.nan)), "x" * 129]),
            )
        )
        rows = record.get("templates")
        if field.startswith("templates[0]") and isinstance(rows, list) and rows:
            if field == "templates[0]":
                rows[0] = replacement
            elif isinstance(rows[0], dict):
                rows[0][field.split(".")[1]] = replacement
        elif field in record and draw(st.booleans()):
            del record[field]
        elif not field.startswith("templates["):
            record[field] = replacement
    return record


record_bytes = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_valid_records().map(lambda r: json.dumps(r).encode()),
    st.sampled_from([b"[" * 100_000, b'{"a":' * 50_000, b"NaN", b'{"x": Infinity}', b'"\\udce9"']),
)


@fuzz_structured
@given(value=record_bytes)
@example(value=b"[" * 100_000)  # deeper than Python's recursion limit
@example(
    value=json.dumps(
        {"format": RECORD_FORMAT, "version": 1, "id": "a", "name": 5, "metadata": {}, "templates": []}
    ).encode()
)
def test_fuzz_record_decoder_raises_only_watchlist_error(value):
    tried("replication: hostile records (decode)")
    _check_record(value)


def _check_record(value: bytes) -> None:
    """The property: a record the store would take, or a one-line WatchlistError."""
    try:
        record = decode_identity(value)
    except WatchlistError as exc:
        assert str(exc).startswith("malformed watchlist record: ") and "\n" not in str(exc)
        return
    matrix = record["embeddings"]
    assert matrix.dtype == np.float32 and matrix.shape == (len(record["templates"]), 128)
    assert np.isfinite(matrix).all() and isinstance(record["name"], str) and isinstance(record["metadata"], dict)


@pytest.fixture(scope="module")
def replica():
    with tempfile.TemporaryDirectory() as folder, WatchlistStore(Path(folder) / "replica.db") as store:
        yield store


@fuzz_store
@given(value=st.one_of(near_valid_records().map(lambda r: json.dumps(r).encode()), record_bytes, st.none()))
def test_fuzz_apply_record_raises_only_watchlist_error(replica, value):
    tried("replication: hostile records (apply to a store)")
    key = "fixed-id"
    if value is not None and value[:1] == b"{":
        with contextlib.suppress(ValueError, AttributeError, RecursionError):
            key = json.loads(value).get("id") or key
        key = key if isinstance(key, str) else "fixed-id"
    try:
        outcome = apply_record(replica, key, value)
    except WatchlistError:
        return
    assert outcome in ("added", "replaced", "removed", "unchanged")


@fuzz_structured
@given(
    identity_id=names.filter(lambda s: len(s) <= 128),
    name=names,
    metadata=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    rows=st.lists(templates(), max_size=4),
)
def test_fuzz_records_round_trip(identity_id, name, metadata, rows):
    tried("replication: round trip")
    identity = Identity(identity_id, name, metadata, 0.0, len(rows))
    stored = [
        Template(
            i,
            identity_id,
            np.frombuffer(base64.b64decode(t["embedding"]), "<f4"),
            t["source"],
            t["quality"],
            t["model_version"],
            0.0,
        )
        for i, t in enumerate(rows)
    ]
    record = decode_identity(encode_record(identity, stored))
    assert (record["id"], record["name"], record["metadata"]) == (identity_id, name, metadata)
    assert np.array_equal(
        record["embeddings"], np.stack([t.embedding for t in stored]) if stored else np.zeros((0, 128))
    )
    assert [(t["source"], t["quality"]) for t in record["templates"]] == [(t.source, t.quality) for t in stored]
    assert all(math.isfinite(q) for q in (t["quality"] for t in record["templates"]) if q is not None)


def _seeded_record(seed: int) -> bytes:
    """A hostile record built from one seed: cheap to draw, so the long run reaches 100,000s of inputs."""
    rng = random.Random(seed)
    mode = rng.randrange(4)
    if mode == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    if mode == 1:
        return json.dumps(random_json(rng)).encode()
    vector = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    template = {"embedding": _b64(vector), "source": "a.jpg", "quality": 0.5, "model_version": "m"}
    record = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "id": f"id-{seed % 1000}",
        "name": "N",
        "metadata": {"k": random_json(rng)},
        "templates": [dict(template) for _ in range(rng.randrange(3))],
    }
    if mode == 2:  # fields replaced by any JSON or removed
        for _ in range(rng.randrange(1, 4)):
            rows = record.get("templates")
            if isinstance(rows, list) and rows and rng.random() < 0.5:
                field = rng.choice([*template, None])
                if field is None:
                    rows[0] = random_json(rng)
                elif isinstance(rows[0], dict):
                    rows[0][field] = random_json(rng)
            else:
                field = rng.choice(list(record) or ["id"])
                if rng.random() < 0.3:
                    record.pop(field, None)
                else:
                    record[field] = random_json(rng)
        return json.dumps(record).encode()
    return mutate(rng, json.dumps(record).encode())  # valid JSON with its bytes damaged


@fuzz
@given(seed=st.integers(0, 2**64 - 1))
def test_fuzz_record_decoder_seeded(seed):
    tried("replication: hostile records (decode, seeded)")
    _check_record(_seeded_record(seed))
