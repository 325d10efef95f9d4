"""Fuzzing the config loader (hypothesis): only ConfigError comes out; valid settings round-trip.

Inputs are what an operator (or a template gone wrong) can hand the worker: any bytes as the
YAML file, YAML documents of the real sections and keys with values of any type, and any
FACEWATCH_* environment variables. tests/fuzzing.py says how long a run is.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import annotated_types
import yaml
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from tests.fuzzing import fuzz, fuzz_structured, mutate, random_json, tried
from worker.calibration import shipped_table
from worker.config import DEFAULT_MODEL, Settings, load_settings
from worker.errors import ConfigError

SECTIONS = {name: field.annotation for name, field in Settings.model_fields.items()}
KEYS = sorted(
    f"{section}.{key}"
    for section, model in SECTIONS.items()
    if isinstance(model, type) and issubclass(model, BaseModel)
    for key in model.model_fields
)
FOLDER = Path(tempfile.mkdtemp(prefix="facewatch-config-fuzz-"))


@contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    """Exactly these FACEWATCH_* variables for the duration (the process's own are put back after)."""
    saved = {name: value for name, value in os.environ.items() if name.startswith("FACEWATCH_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(variables)
    try:
        yield
    finally:
        for name in [n for n in os.environ if n.startswith("FACEWATCH_")]:
            del os.environ[name]
        os.environ.update(saved)


def _load(text: bytes | None, env: dict[str, str]):
    path = None
    if text is not None:
        path = FOLDER / "facewatch.yaml"
        path.write_bytes(text)
    with environment(env):
        return load_settings(path)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=16),
    st.sampled_from(["hog", "cuda:0", "${UNSET_VARIABLE}", "rtsp://u:p@h/x", "2001-13-45", "0x1F", ".inf"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def documents(draw: st.DrawFn) -> dict:
    """A mapping of real sections and keys (and some unknown ones) to values of any type."""
    document: dict = {}
    for key in draw(st.lists(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), max_size=5)):
        section, _, name = key.partition(".")
        if name:
            entry = document.setdefault(section, {})
            if isinstance(entry, dict):
                entry[name] = draw(values)
        else:
            document[section] = draw(values)
    if draw(st.booleans()):
        document["cameras"] = draw(
            st.lists(
                st.one_of(values, st.fixed_dictionaries({"id": st.text(max_size=10), "url": st.text(max_size=20)})),
                max_size=2,
            )
        )
    return document


def _dump(document: dict) -> bytes:
    return yaml.safe_dump(document, allow_unicode=True).encode("utf-8", "surrogatepass")


yaml_files = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    documents().map(_dump),
    documents().map(lambda d: json.dumps(d).encode()),  # JSON is YAML too, and dumps 50 times faster
    st.sampled_from(
        [
            b"a: &a [*a]",  # a list that contains itself
            b"when: 2001-13-45",  # a date YAML's resolver accepts and datetime refuses
            b"images: {max_pixels: !!binary 'not base64'}",
            b"\xff\xfe not UTF-8",
            b"!!python/object:os.system {}",
        ]
    ),
)
env_names = st.one_of(
    st.sampled_from([f"FACEWATCH_{k.upper().replace('.', '__')}" for k in KEYS]),
    st.sampled_from([f"FACEWATCH_{s.upper()}" for s in SECTIONS]),
    st.text(st.characters(codec="ascii", exclude_characters="=\0"), min_size=1, max_size=12).map(
        lambda t: "FACEWATCH_" + t
    ),
)
env_values = st.one_of(
    st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=30),
    values.map(json.dumps),  # sections and lists are JSON in the environment
    st.sampled_from(["not json", "[]", '[{"id": "a"}]', "{}", '{"max_pixels": 5}', "1e999", "true", "-1"]),
)
environments = st.dictionaries(env_names, env_values, max_size=4)


@fuzz_structured
@given(text=yaml_files, env=environments)
@example(text=b"camera: [\n\xe9", env={})
@example(text=b"when: 2001-13-45", env={})
@example(text=b"1: x", env={})  # a key that is not text (found by the seeded property, seed 48668)
@example(text=b"watchlist: {store: '~nobody-at-all/w.db'}", env={})  # RuntimeError from expanduser (seed 3381)
@example(text=b"[" * 1000, env={})  # deeper than the YAML composer's recursion (90 ms to parse: not drawn at random)
def test_fuzz_config_loader_raises_only_config_error(text, env):
    tried("config: hostile YAML and environment")
    _check_config(text, env)


def _check_config(text: bytes | None, env: dict[str, str]) -> None:
    """The property: Settings, or a one-line ConfigError."""
    try:
        settings = _load(text, env)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(settings, Settings)


def _bounds(metadata: list) -> dict:
    found: dict = {}
    for item in metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(item, getattr(annotated_types, name.capitalize())) or hasattr(item, name):
                value = getattr(item, name, None)
                if value is not None:
                    found[name] = value
    return found


def _strategy(annotation: object, metadata: list) -> st.SearchStrategy | None:
    """Valid values of one config key, from its type and bounds; None for keys left at their default."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        inner = _strategy(next(a for a in args if a is not type(None)), metadata)
        return None if inner is None else st.one_of(st.none(), inner)
    bounds = _bounds(metadata)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        low = bounds.get("ge", bounds.get("gt", -(2**40) - 1) + 1)
        high = bounds.get("le", bounds.get("lt", 2**40 + 1) - 1)
        return st.integers(low, high)
    if annotation is float:
        return st.floats(
            bounds.get("ge", bounds.get("gt", -1e9)),
            bounds.get("le", bounds.get("lt", 1e9)),
            exclude_min="gt" in bounds,
            exclude_max="lt" in bounds,
            allow_nan=False,
        )
    if annotation is str:
        return st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20)
    if annotation is Path:
        return st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12).map(Path)
    return None  # secrets, cameras: not round-tripped here


FIELDS = {
    key: strategy
    for key in KEYS
    if key != "kafka.sasl_password"
    for section, name in [key.split(".")]
    for field in [SECTIONS[section].model_fields[name]]
    if (strategy := _strategy(field.annotation, field.metadata)) is not None
}


@st.composite
def valid_settings(draw: st.DrawFn) -> Settings:
    chosen = draw(st.lists(st.sampled_from(sorted(FIELDS)), unique=True, max_size=12))
    document: dict = {}
    for key in chosen:
        section, name = key.split(".")
        document.setdefault(section, {})[name] = draw(FIELDS[key])
    if document.get("embedder", {}).get("model", DEFAULT_MODEL) != DEFAULT_MODEL:
        # A documented rule: a trained model's own thresholds are set (values off the defaults, which the
        # round trip below leaves out), and dlib's FMR table is not used.
        chosen_watchlist = document.setdefault("watchlist", {})
        chosen_watchlist.pop("match_fmr", None)
        chosen_watchlist.update(match_threshold=0.31, unknown_threshold=0.41)
        if document.get("visitors", {}).get("enabled"):
            document["visitors"].update(threshold=0.21, merge_threshold=0.16, opt_out_threshold=0.33)
    watchlist = document.get("watchlist", {})
    match = watchlist.get("match_threshold", 0.5)
    if watchlist.get("match_fmr") is not None:  # documented rules: one of the two; the rate's distance
        watchlist.pop("match_threshold", None)
        match = shipped_table().distance_at(watchlist["match_fmr"])
    if watchlist.get("unknown_threshold", 0.6) < match:  # a documented rule
        watchlist["unknown_threshold"] = match
    admin = document.get("admin", {})
    tls = [admin.get("tls_cert"), admin.get("tls_key")]
    if any(tls) and not all(tls):  # a documented rule: a certificate and its key go together
        admin["tls_cert"] = admin["tls_key"] = next(path for path in tls if path)
    return Settings(**document)


@fuzz_structured
@given(settings=valid_settings())
def test_fuzz_valid_settings_round_trip_through_yaml_and_environment(settings):
    tried("config: round trip")
    shown = settings.model_dump(mode="json", exclude_defaults=True)
    assert _load(yaml.safe_dump(shown).encode(), {}) == settings
    env = {}
    for section, keys in shown.items():
        for key, value in keys.items():
            if value is not None:
                env[f"FACEWATCH_{section.upper()}__{key.upper()}"] = (
                    repr(value) if isinstance(value, float) else str(value)
                )
    loaded = _load(None, env)
    assert loaded.model_dump(exclude_none=True) == settings.model_dump(exclude_none=True)
    for section, keys in shown.items():  # floats survive exactly (repr), not approximately
        for key, value in keys.items():
            if isinstance(value, float):
                assert math.isclose(getattr(getattr(loaded, section), key), value, rel_tol=0, abs_tol=0)


WORKER_YAML = (Path(__file__).resolve().parents[1] / "deploy" / "config" / "worker.yaml").read_bytes()
ENV_NAMES = [f"FACEWATCH_{k.upper().replace('.', '__')}" for k in KEYS] + [f"FACEWATCH_{s.upper()}" for s in SECTIONS]


def _seeded_config(seed: int) -> tuple[bytes | None, dict[str, str]]:
    """A hostile config file and environment built from one seed: cheap to draw, for the long run."""
    rng = random.Random(seed)
    mode = rng.randrange(4)
    if mode == 0:
        text: bytes | None = mutate(rng, WORKER_YAML)  # the shipped config with its bytes damaged
    elif mode == 1:
        document: dict = {}
        for key in rng.sample(KEYS, rng.randrange(1, 5)):
            section, name = key.split(".")
            document.setdefault(section, {})[name] = random_json(rng)
        text = json.dumps(document).encode() if rng.random() < 0.8 else yaml.safe_dump(document).encode()
    elif mode == 2:
        text = bytes(rng.randrange(256) for _ in range(rng.randrange(120)))
    else:
        text = None
    env = {}
    for _ in range(rng.choice([0, 0, 1, 2])):
        name = rng.choice(ENV_NAMES) if rng.random() < 0.9 else "FACEWATCH_" + rng.choice("abcXYZ_09.-\n\t ~")
        env[name] = rng.choice([json.dumps(random_json(rng)), str(random_json(rng)), "", "68", "-1"])
    return text, {k: v.replace("\0", "") for k, v in env.items()}


@fuzz
@given(seed=st.integers(0, 2**64 - 1))
def test_fuzz_config_loader_seeded(seed):
    tried("config: hostile YAML and environment (seeded)")
    _check_config(*_seeded_config(seed))
