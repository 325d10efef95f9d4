"""Kafka clients from the config, shared by the stream and the watchlist: settings, connecting, sending.

The SASL password is read from the environment only (FACEWATCH_KAFKA__SASL_PASSWORD) and never
logged. Producers wait for all in-sync replicas (acks=all) and retry until delivery times out.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka import KafkaProducer
from kafka.errors import InvalidRecordError, KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

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


_API_VERSIONS_V0 = 18, 0
_PROBE_CORRELATION_ID = 0x66776368


def _api_versions_request(client_id: str) -> bytes:
    name = client_id.encode()
    header = struct.pack(">hhih", *_API_VERSIONS_V0, _PROBE_CORRELATION_ID, len(name)) + name
    return struct.pack(">i", len(header)) + header  # ApiVersions v0 has an empty body


def broker_answers(config: KafkaConfig, timeout: float) -> str | None:
    """Whether a bootstrap server answers a Kafka request now: None if one did, else why none did.

    Asks for the API versions, which every broker answers before authentication, on a fresh
    connection (TLS when configured): cheap, and unlike a metadata request it cannot make a broker
    create topics, nor disturb a client's own connections and group membership.
    """
    deadline = time.monotonic() + timeout
    errors = []
    for server in common_settings(config)["bootstrap_servers"]:
        host, _, port = server.rpartition(":")
        host = host.strip("[]")
        try:
            left = max(0.05, deadline - time.monotonic())
            with socket.create_connection((host, int(port)), timeout=left) as raw:
                sock: socket.socket = raw
                if config.security_protocol in ("SSL", "SASL_SSL"):
                    context = ssl.create_default_context(cafile=str(config.ssl_cafile) if config.ssl_cafile else None)
                    sock = context.wrap_socket(raw, server_hostname=host)
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                sock.sendall(_api_versions_request(config.client_id))
                answer = b""
                while len(answer) < 8:
                    chunk = sock.recv(8 - len(answer))
                    if not chunk:
                        raise ConnectionError("connection closed without an answer")
                    answer += chunk
                if struct.unpack(">ii", answer)[1] != _PROBE_CORRELATION_ID:
                    raise ConnectionError("not a Kafka answer")
                return None
        except (OSError, ValueError) as exc:  # ssl.SSLError and socket timeouts are OSErrors
            errors.append(f"{server}: {type(exc).__name__}: {exc}")
    return "; ".join(errors) or "no bootstrap servers"


def producer_failed_for_good(error: BaseException) -> bool:
    """Whether a send's error means its producer will fail every send from now on (replace it).

    kafka-python's idempotent producer enters such a state, for instance, when a broker that came
    back empty no longer knows its producer id. Retriable errors and errors about the one message
    (too large, invalid) leave the producer usable.
    """
    message_errors = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError)
    return not getattr(error, "retriable", False) and not isinstance(error, message_errors)


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


@dataclass
class _Send:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    on_delivered: Callable[[], None] | None


class KafkaSender:
    """A producer that connects with backoff and re-sends what failed when asked to flush.

    Sends that fail (after the producer's own retries, ``delivery_timeout_ms``) are kept and sent
    again by ``flush``, up to ``resends`` times; until then ``flush`` returns False, so whoever
    commits input offsets behind these messages holds back. Failures are counted through
    ``on_failure``. A producer that reports a fatal (non-retriable) error, as kafka-python's
    idempotent producer does when a broker that came back empty no longer knows its producer id,
    is replaced by a new one before the re-send. Thread-safe: sends come from lane threads,
    callbacks from Kafka's I/O thread, flushes from the committing thread.
    """

    def __init__(
        self,
        config: KafkaConfig,
        what: str,
        should_stop: Callable[[], bool],
        on_failure: Callable[[BaseException], None] | None = None,
        resends: int = 3,
    ) -> None:
        self.config = config
        self.what = what
        self._should_stop = should_stop
        self._on_failure = on_failure
        self.resends = resends
        self._producer: KafkaProducer | None = None
        self._connect_lock = threading.Lock()
        self._failed: list[_Send] = []
        self._failed_lock = threading.Lock()
        self._broken = threading.Event()

    def _ensure_producer(self) -> KafkaProducer | None:
        with self._connect_lock:
            if self._producer is None:
                self._producer = connect_with_backoff(
                    lambda: KafkaProducer(**producer_settings(self.config)),
                    f"{self.what} ({self.config.bootstrap_servers})",
                    self._should_stop,
                    max_backoff_s=self.config.retry_backoff_max_s,
                )
            return self._producer

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivered: Callable[[], None] | None = None,
    ) -> None:
        """Send one message; ``on_delivered`` runs once the broker acknowledged it."""
        self._send(_Send(topic, key, value, headers, on_delivered))

    def _send(self, item: _Send) -> None:
        producer = self._ensure_producer()
        if producer is None:  # stopping before a broker was ever reached
            self._failed_send(item, RuntimeError("no broker reachable"))
            return
        try:
            future = producer.send(item.topic, key=item.key, value=item.value, headers=item.headers)
        except KafkaError as exc:  # e.g. the producer's buffer stayed full for max_block_ms
            self._failed_send(item, exc)
            return
        if item.on_delivered is not None:
            callback = item.on_delivered
            future.add_callback(lambda _: callback())
        future.add_errback(lambda exc: self._failed_send(item, exc))

    def _failed_send(self, item: _Send, exc: BaseException) -> None:
        if producer_failed_for_good(exc):
            self._broken.set()
        log.error("%s: message to %s not delivered: %s", self.what, item.topic, exc)
        if self._on_failure is not None:
            self._on_failure(exc)
        with self._failed_lock:
            self._failed.append(item)

    @property
    def pending_failures(self) -> int:
        """Messages that failed and wait for a re-send."""
        with self._failed_lock:
            return len(self._failed)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait for everything sent; re-send failures up to ``resends`` times. True when all is delivered."""
        for attempt in range(self.resends + 1):
            self._replace_if_broken()
            if self._producer is not None:
                try:
                    self._producer.flush(timeout)
                except Exception as exc:  # kafka-python raises its own timeout types here
                    log.warning("%s: flush: %s", self.what, exc)
                    return False
            with self._failed_lock:
                failed, self._failed = self._failed, []
            if not failed:
                return True
            if attempt == self.resends:
                with self._failed_lock:
                    self._failed = failed + self._failed
                return False
            log.warning("%s: re-sending %d messages (attempt %d)", self.what, len(failed), attempt + 1)
            for item in failed:
                self._send(item)
        return False

    def _replace_if_broken(self) -> None:
        if not self._broken.is_set():
            return
        self._broken.clear()
        with self._connect_lock:
            old, self._producer = self._producer, None  # the next send connects a new one
        if old is not None:
            log.warning("%s: the producer failed for good; starting a new one", self.what)
            try:
                old.close(timeout=0)
            except KafkaError as exc:  # what it still held failed, and waits in _failed for a re-send
                log.debug("%s: closing the failed producer: %s", self.what, exc)

    def close(self, timeout: float = 10.0) -> None:
        """Flush, then close the producer."""
        if self._producer is not None:
            self.flush()
            self._producer.close(timeout=timeout)
