"""Kafka client settings from the config, shared by consumers, producers and admin calls.

The SASL password is read from the environment only (FACEWATCH_KAFKA__SASL_PASSWORD) and never
logged. Producers wait for all in-sync replicas (acks=all) and retry until delivery times out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kafka.errors import KafkaError

from worker.config import KafkaConfig
from worker.runtime.backoff import Backoff

log = logging.getLogger(__name__)
T = TypeVar("T")


def common_settings(config: KafkaConfig) -> dict[str, Any]:
    """Connection, security and reconnection settings for any kafka-python client."""
    settings: dict[str, Any] = {
        "bootstrap_servers": [server.strip() for server in config.bootstrap_servers.split(",") if server.strip()],
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
        "reconnect_backoff_max_ms": int(config.retry_backoff_max_s * 1000),
    }
    if config.sasl_mechanism:
        settings["sasl_mechanism"] = config.sasl_mechanism
        settings["sasl_plain_username"] = config.sasl_username
        settings["sasl_plain_password"] = config.sasl_password.get_secret_value() if config.sasl_password else None
    if config.ssl_cafile:
        settings["ssl_cafile"] = str(config.ssl_cafile)
    return settings


def producer_settings(config: KafkaConfig) -> dict[str, Any]:
    """A producer that does not lose acknowledged messages."""
    return {
        **common_settings(config),
        "acks": "all",
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 120_000,
        "max_in_flight_requests_per_connection": 1,  # keeps each camera's events in order across retries
        "linger_ms": 5,
        "compression_type": "gzip",
        "max_request_size": 16 * 1024 * 1024,
    }


def connect_with_backoff(
    create: Callable[[], T],
    what: str,
    should_stop: Callable[[], bool],
    on_failure: Callable[[str], None] | None = None,
    max_backoff_s: float = 30.0,
) -> T | None:
    """Call ``create`` until it succeeds (or should_stop() says to give up: returns None)."""
    backoff = Backoff(maximum=max_backoff_s)
    while not should_stop():
        try:
            return create()
        except (KafkaError, OSError) as exc:
            delay = backoff.next_delay()
            message = f"{what}: {type(exc).__name__}: {exc}; retrying in {delay:.1f} s"
            log.warning(message)
            if on_failure:
                on_failure(message)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not should_stop():
                time.sleep(0.1)
    return None
