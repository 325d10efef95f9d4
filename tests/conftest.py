"""Fixtures that start real components (Kafka-compatible broker, RTSP server, Prometheus) for tests.

A component that is not installed makes its tests skip with the reason (a user's fresh clone);
set REQUIRE_TEST_INFRA=1 (CI, after scripts/install-system-deps.sh) to make that a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.infra import kafka_broker as _kafka
from tests.infra import prometheus_server as _prometheus
from tests.infra import rtsp_server as _rtsp
from tests.infra.kafka_broker import KafkaBroker
from tests.infra.prometheus_server import PrometheusServer
from tests.infra.rtsp_server import RtspServer

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


def require_component(reason: str | None) -> None:
    """Skip the test when ``reason`` is set, or fail it when REQUIRE_TEST_INFRA=1."""
    if reason is None:
        return
    if os.environ.get("REQUIRE_TEST_INFRA") == "1":
        pytest.fail(f"REQUIRE_TEST_INFRA=1 but a real component is unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder beside the repository (real data; present in CI, absent in a fresh clone)."""
    if not (SHARED_DIR / "data").is_dir():
        pytest.skip(f"needs the shared data folder {SHARED_DIR} (present in CI; absent in a user's fresh clone)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """One Tansu broker for the whole session; use unique topic and group names per test.

    Tests that stop or restart a broker must use ``kafka_broker_factory`` instead, so they do not
    wipe the shared broker's topics (its storage is memory only).
    """
    require_component(_kafka.unavailable_reason())
    with KafkaBroker() as broker:
        yield broker


@pytest.fixture
def kafka_broker_factory() -> Iterator[Callable[..., KafkaBroker]]:
    """Start private brokers (``factory(**KafkaBroker kwargs)``), each stopped after the test."""
    require_component(_kafka.unavailable_reason())
    brokers: list[KafkaBroker] = []

    def factory(**kwargs: Any) -> KafkaBroker:
        broker = KafkaBroker(**kwargs)
        brokers.append(broker)
        return broker.start()

    yield factory
    for broker in brokers:
        broker.close()


@pytest.fixture
def rtsp_server_factory() -> Iterator[Callable[..., RtspServer]]:
    """Start RTSP servers: ``factory(video_path, mount="/cam", **kwargs)``; all stopped after the test."""
    require_component(_rtsp.unavailable_reason())
    servers: list[RtspServer] = []

    def factory(video_path: str | Path, mount: str = "/cam", **kwargs: Any) -> RtspServer:
        server = RtspServer(video_path, mount=mount, **kwargs)
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.close()


@pytest.fixture
def prometheus_server_factory() -> Iterator[Callable[..., PrometheusServer]]:
    """Start Prometheus servers: ``factory(scrape_targets=[...], rule_files=[...])``; stopped after the test."""
    require_component(_prometheus.unavailable_reason())
    servers: list[PrometheusServer] = []

    def factory(
        scrape_targets: Sequence[str] = (), rule_files: Sequence[str | Path] = (), **kwargs: Any
    ) -> PrometheusServer:
        server = PrometheusServer(scrape_targets, rule_files, **kwargs)
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many inputs each fuzz property tried (tests/fuzzing.py), when any ran."""
    from tests.fuzzing import EXAMPLES, TRIED

    if TRIED:
        terminalreporter.section(f"fuzzing: inputs tried per property (max_examples {EXAMPLES})")
        for prop, count in sorted(TRIED.items()):
            terminalreporter.write_line(f"{prop}: {count}")
