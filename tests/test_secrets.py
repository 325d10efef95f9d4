"""Secrets: never printed by `config show`, never in logs, never accepted from the YAML file, never echoed."""

from __future__ import annotations

import io
import logging

import pytest
import yaml

from worker.cli.main import main
from worker.config import load_settings
from worker.errors import ConfigError
from worker.secrets import SecretFilter, register_secret


def test_config_show_masks_camera_urls_and_the_sasl_password(tmp_path, capsys, monkeypatch):
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump({"cameras": [{"id": "door", "url": "rtsp://viewer:LITERAL-pw@cam/s"}]}))
    monkeypatch.setenv("FACEWATCH_KAFKA__SASL_PASSWORD", "sasl-secret-value")
    assert main(["config", "show", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "LITERAL-pw" not in out and "rtsp://viewer:***@cam/s" in out
    assert "sasl-secret-value" not in out


def test_the_sasl_password_is_refused_in_the_config_file(tmp_path):
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump({"kafka": {"sasl_password": "in-a-file"}}))
    with pytest.raises(ConfigError, match="FACEWATCH_KAFKA__SASL_PASSWORD") as caught:
        load_settings(config)
    assert "in-a-file" not in str(caught.value)


def test_a_type_error_does_not_echo_a_secret(monkeypatch):
    monkeypatch.setenv("FACEWATCH_CAMERAS", '[{"id": "door", "url": ["rtsp://v:typo-secret@cam"]}]')
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    assert "typo-secret" not in str(caught.value) and "cameras.0.url" in str(caught.value)


def test_log_lines_never_show_a_registered_secret(monkeypatch):
    monkeypatch.setenv("FACEWATCH_KAFKA__SASL_PASSWORD", "kafka-sasl-pw-1234")
    load_settings(None)  # reading the settings registers the secret
    register_secret("ab")  # too short to register: would mask ordinary words
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter())
    logger = logging.getLogger("kafka.conn.test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        # kafka-python's DEBUG dump of its settings, as it logs them.
        logger.debug("config: %s", {"sasl_plain_password": "kafka-sasl-pw-1234", "client_id": "ab"})
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue()
    assert "kafka-sasl-pw-1234" not in line and "'sasl_plain_password': '***'" in line and "'ab'" in line


def test_the_watchlist_key_is_masked_refused_in_the_file_and_never_echoed(tmp_path, capsys, monkeypatch):
    key = "c2VhbGVkLWtleS0zMi1ieXRlcy1sb25nLXh4eHh4eHg="
    monkeypatch.setenv("FACEWATCH_WATCHLIST__ENCRYPTION_KEY", key)
    assert main(["config", "show"]) == 0
    assert key not in capsys.readouterr().out
    assert SecretFilter().filter(record := logging.LogRecord("x", logging.INFO, "", 0, "key %s", (key,), None))
    assert record.getMessage() == "key ***"  # reading the settings registered it
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump({"watchlist": {"encryption_key": key}}))
    with pytest.raises(ConfigError, match="FACEWATCH_WATCHLIST__ENCRYPTION_KEY") as caught:
        load_settings(config)
    assert key not in str(caught.value)
    monkeypatch.setenv("FACEWATCH_WATCHLIST__ENCRYPTION_KEY_FILE", str(tmp_path / "key"))
    with pytest.raises(ConfigError, match="encryption_key or encryption_key_file, not both") as caught:
        load_settings(None)
    assert key not in str(caught.value)
