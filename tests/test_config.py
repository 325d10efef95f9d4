"""The typed configuration: sources and their priority, strictness, error messages, docs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.cli.config_cmd import configuration_reference
from worker.config import Settings, load_settings
from worker.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("FACEWATCH_"):
            monkeypatch.delenv(name)


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "facewatch.yaml"
    path.write_text(text)
    return path


def test_defaults():
    settings = load_settings()
    assert settings.detector.name == "retinaface" and settings.landmarks.points == 5
    assert settings.embedder.device == "auto" and settings.embedder.precision == "auto"
    assert settings.embedder.recheck_band == 0.01


def test_priority_flags_over_env_over_file(tmp_path, monkeypatch):
    path = write(tmp_path, "detector:\n  name: haar\n  upsample: 2\nembedder:\n  max_batch: 8\n")
    assert load_settings(path).detector.name == "haar"
    monkeypatch.setenv("FACEWATCH_DETECTOR__NAME", "mmod")
    settings = load_settings(path)
    assert settings.detector.name == "mmod" and settings.detector.upsample == 2  # env wins, file kept for the rest
    settings = load_settings(path, {"detector": {"name": "hog"}, "embedder": {"threads": 1}})
    assert settings.detector.name == "hog" and settings.embedder.max_batch == 8 and settings.embedder.threads == 1


def test_config_file_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEWATCH_CONFIG", str(write(tmp_path, "landmarks:\n  points: 68\n")))
    assert load_settings().landmarks.points == 68


def test_alignment_defaults_to_the_detector_and_takes_the_shape_predictor(tmp_path, monkeypatch):
    assert load_settings().landmarks.alignment == "detector"
    path = write(tmp_path, "landmarks:\n  alignment: shape_predictor\n")
    assert load_settings(path).landmarks.alignment == "shape_predictor"
    monkeypatch.setenv("FACEWATCH_LANDMARKS__ALIGNMENT", "detector")
    assert load_settings(path).landmarks.alignment == "detector"  # the environment over the file


def test_model_dir_shorthand(monkeypatch, tmp_path):
    monkeypatch.setenv("FACEWATCH_MODEL_DIR", str(tmp_path))
    assert load_settings().models.dir == tmp_path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "detector:\n  name: yolo\n",
            "detector.name: Input should be 'hog', 'mmod', 'haar' or 'retinaface' (got 'yolo')",
        ),
        ("detector:\n  upsample: 7\n", "detector.upsample: Input should be less than or equal to 3"),
        ("detectr:\n  name: hog\n", "detectr: unknown key"),
        ("embedder:\n  devcie: cpu\n", "embedder.devcie: unknown key"),
        ("landmarks:\n  points: 12\n", "landmarks.points"),
        (
            "landmarks:\n  alignment: retinaface\n",
            "landmarks.alignment: Input should be 'detector' or 'shape_predictor' (got 'retinaface')",
        ),
        ("- just\n- a list\n", "must hold a mapping"),
        ("detector: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_files_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, text))
    assert message in str(error.value)


def test_unknown_env_variables_are_errors(monkeypatch):
    monkeypatch.setenv("FACEWATCH_DETECTOR__BOGUS", "1")
    with pytest.raises(ConfigError, match=r"detector\.bogus: unknown key"):
        load_settings()
    monkeypatch.delenv("FACEWATCH_DETECTOR__BOGUS")
    monkeypatch.setenv("FACEWATCH_DETCTOR__NAME", "hog")
    with pytest.raises(ConfigError, match="unknown environment variable FACEWATCH_DETCTOR__NAME"):
        load_settings()


def test_enrollment_section_from_file_and_env(tmp_path, monkeypatch):
    path = write(tmp_path, "enrollment:\n  min_sharpness: 7\n  video_frames: 40\n")
    monkeypatch.setenv("FACEWATCH_ENROLLMENT__LARGEST", "true")
    monkeypatch.setenv("FACEWATCH_ENROLLMENT__MIN_SHARPNESS", "5.5")
    enrollment = load_settings(path).enrollment
    assert (enrollment.min_sharpness, enrollment.video_frames, enrollment.largest) == (5.5, 40, True)
    assert enrollment.min_face_size == 40 and enrollment.duplicate_distance == 0.1  # the defaults
    with pytest.raises(ConfigError, match=r"enrollment\.min_sharpnes: unknown key"):
        load_settings(write(tmp_path, "enrollment:\n  min_sharpnes: 3\n"))
    with pytest.raises(ConfigError, match=r"enrollment\.video_faces: Input should be greater than or equal to 1"):
        load_settings(None, {"enrollment": {"video_faces": 0}})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml")


def test_docs_list_every_key_as_the_code_does():
    assert DOCS.read_text() == configuration_reference(), "run: facewatch config docs > docs/configuration.md"


def test_inverted_thresholds_and_unparsable_environment_values_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown_threshold \(0.6\) must be at least match_threshold \(0.7\)"):
        load_settings(None, {"watchlist": {"match_threshold": 0.7, "unknown_threshold": 0.6}})
    monkeypatch.setenv("FACEWATCH_CAMERAS", "not json")
    with pytest.raises(ConfigError, match="cameras"):
        load_settings(None)


def test_config_check_expands_camera_variables(tmp_path, capsys):
    from worker.cli.main import main

    config = tmp_path / "worker.yaml"
    config.write_text("cameras:\n  - id: a\n    url: rtsp://u:${FACEWATCH_TEST_UNSET_VAR}@h/s\n")
    assert main(["config", "check", str(config)]) == 2
    assert "FACEWATCH_TEST_UNSET_VAR is not set" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Found by tests/test_config_fuzz.py; each raised a traceback (UnicodeDecodeError, ValueError,
        # RecursionError) instead of a one-line ConfigError.
        (b"detector:\n  name: caf\xe9\n", "is not UTF-8 text (byte 21)"),
        (b"images:\n  max_pixels: 2001-13-45\n", "is not valid YAML: month must be in 1..12"),
        (b"[" * 1000, "is not valid YAML: nested too deeply"),
        (b"1: x\n", ": 1 is not a section name"),  # TypeError: keywords must be strings
        (b"null: x\n", ": None is not a section name"),
    ],
)
def test_unreadable_config_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "facewatch.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == f"config file {path}{'' if message.startswith(':') else ' '}{message}"


def test_environment_values_are_text_even_for_numeric_choices(monkeypatch):
    # A Literal of ints refused the text "68": FACEWATCH_LANDMARKS__POINTS could not select the 68-point model.
    monkeypatch.setenv("FACEWATCH_LANDMARKS__POINTS", "68")
    assert load_settings().landmarks.points == 68
    monkeypatch.setenv("FACEWATCH_LANDMARKS__POINTS", "67")
    with pytest.raises(ConfigError, match=r"landmarks\.points"):
        load_settings()


def test_unknown_environment_names_are_shown_on_one_line(monkeypatch):
    monkeypatch.setenv("FACEWATCH_\nX", "1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "\n" not in str(caught.value) and "'FACEWATCH_\\nX'" in str(caught.value)


def test_unknown_keys_are_shown_on_one_line(tmp_path):
    path = tmp_path / "facewatch.yaml"
    path.write_bytes(b'? "\\n\\n"\n')  # a key of two newlines (found by tests/test_config_fuzz.py)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == f"invalid configuration (config file {path}): '\\n\\n': unknown key"


def test_a_home_folder_of_no_user_is_a_config_error(tmp_path, monkeypatch):
    # Path.expanduser raised RuntimeError("Could not determine home directory.") out of load_settings.
    monkeypatch.setenv("FACEWATCH_WATCHLIST__STORE", "~no-such-user-here/watchlist.db")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid configuration: watchlist.store: Value error, ~no-such-user-here is not a user's home folder "
        "(got '~no-such-user-here/watchlist.db')"
    )


def test_config_schema_is_the_settings(tmp_path):
    """`facewatch config schema`: what load_settings accepts, for editors and the chart's values.schema.json."""
    import jsonschema
    import yaml

    from worker.cli.config_cmd import config_json_schema

    schema = config_json_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    deploy = Path(__file__).resolve().parents[1] / "deploy" / "config" / "worker.yaml"
    good = yaml.safe_load(deploy.read_text())
    load_settings(deploy)
    assert not list(validator.iter_errors(good))
    assert "$ref" not in json.dumps(schema), "self-contained: it is embedded in other documents"
    for bad, key in [
        ({"detectr": {}}, "detectr"),
        ({"pipeline": {"detect_evry": 3}}, "detect_evry"),
        ({"detector": {"name": "yolo"}}, "yolo"),
        ({"http": {"port": 70000}}, "70000"),
        ({"cameras": [{"id": "a"}]}, "url"),
    ]:
        errors = [error.message for error in validator.iter_errors(bad)]
        assert any(key in message for message in errors), (bad, errors)
        with pytest.raises(ConfigError):  # and the worker refuses it as well
            load_settings(write(tmp_path, yaml.safe_dump(bad)))


def test_the_default_stores_follow_xdg_data_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    settings = Settings()
    assert settings.watchlist.store == home / ".local" / "share" / "facewatch" / "watchlist.db"
    assert settings.visitors.store == home / ".local" / "share" / "facewatch" / "visitors.db"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    settings = Settings()
    assert settings.watchlist.store == tmp_path / "data" / "facewatch" / "watchlist.db"
    assert settings.visitors.store == tmp_path / "data" / "facewatch" / "visitors.db"
    # Only the defaults move, and only to an absolute folder (the XDG rule: a relative one is ignored).
    assert Settings(watchlist={"store": "~/w.db"}).watchlist.store == home / "w.db"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")
    assert Settings().watchlist.store == home / ".local" / "share" / "facewatch" / "watchlist.db"
