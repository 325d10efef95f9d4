"""Credentials in URLs never reach logs, errors or `config show`."""

from __future__ import annotations

import pytest

from worker.stream.urls import expand_env, redact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://viewer:secret@10.0.0.21:554/stream1", "rtsp://viewer:***@10.0.0.21:554/stream1"),
        ("rtsp://viewer:se/cr@t@cam/s", "rtsp://viewer:***@cam/s"),  # '/' and a raw '@' in the password
        ("rtsp://:secret@cam/s", "rtsp://***@cam/s"),  # empty user name
        ("rtsp://tokenonly@cam", "rtsp://***@cam"),
        ("rtsp://cam/s?user=a&password=hunter2&x=1", "rtsp://cam/s?user=a&password=***&x=1"),
        ("rtsp://cam/s?api_key=abc;pwd=xyz", "rtsp://cam/s?api_key=***;pwd=***"),
        ("opening rtsp://u:p@ss@h/x failed: timeout", "opening rtsp://u:***@h/x failed: timeout"),
        ("rtsp://cam/stream1", "rtsp://cam/stream1"),  # nothing to hide
    ],
)
def test_redact(url, shown):
    assert redact(url) == shown


def test_a_password_from_the_environment_is_scrubbed_wherever_it_appears(monkeypatch):
    monkeypatch.setenv("DOOR_PASSWORD", "s3cr3t-from-env")
    url = expand_env("rtsp://viewer:${DOOR_PASSWORD}@cam/stream", "cameras.0.url")
    assert url == "rtsp://viewer:s3cr3t-from-env@cam/stream"
    # A message that quotes the password outside any URL shape is scrubbed too.
    assert redact("auth failed for s3cr3t-from-env") == "auth failed for ***"
