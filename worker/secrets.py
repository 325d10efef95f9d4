"""Secrets the process knows (Kafka SASL password, values put into camera URLs), scrubbed from every log line.

Redaction of known shapes (worker/stream/urls.py) misses what it cannot recognise: a library's
debug dump of its own settings, an exception that quotes a URL oddly. So every secret value is
registered here as it is read, and ``SecretFilter`` on the log handlers replaces any occurrence
of one with ``***``, whatever printed it.
"""

from __future__ import annotations

import logging
import threading

MASK = "***"
MIN_LENGTH = 4  # shorter values would mask ordinary words; such secrets are weak anyway

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret value so that logs never show it."""
    if value and len(value) >= MIN_LENGTH:
        with _lock:
            _secrets.add(value)


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ***."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)  # longest first: a secret inside another
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class SecretFilter(logging.Filter):
    """A handler filter: formats each record's message once and scrubs registered secrets from it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_text is None and record.exc_info[1] is not None:
            exc_text = logging.Formatter().formatException(record.exc_info)
            if scrub(exc_text) != exc_text:
                record.exc_text, record.exc_info = scrub(exc_text), None
        return True


def install_log_filter() -> None:
    """Put the filter on every handler of the root logger (call after logging is configured)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter())
