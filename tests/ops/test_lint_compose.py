"""yamllint, hadolint, and the docker compose stack's structure."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import yaml

from tests.ops.opsfiles import DEPLOY, ROOT, require_tool
from worker.config import load_settings

COMPOSE = DEPLOY / "docker-compose.yml"


def _run(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def test_yamllint_deploy_and_helm() -> None:
    result = _run([require_tool("yamllint"), "--strict", "-c", str(ROOT / ".yamllint"), "deploy", "helm"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_catches_a_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\n")  # duplicate key
    result = _run([require_tool("yamllint"), "--strict", "-c", str(ROOT / ".yamllint"), str(bad)])
    assert result.returncode != 0 and "key-duplicates" in result.stdout


def test_hadolint_dockerfile() -> None:
    result = _run([require_tool("hadolint"), "--failure-threshold", "info", "Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_problem(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install x\n")
    result = _run([require_tool("hadolint"), str(bad)])
    assert result.returncode != 0


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage"
    assert "ARG TORCH_VARIANT=cpu" in text and "TORCH_INDEX_URL" in text
    assert "-c constraints.txt" in text
    runtime = text[text.rindex("FROM ") :]
    assert "USER 10001" in runtime
    assert 'ENTRYPOINT ["facewatch"]' in runtime and 'CMD ["run"]' in runtime
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored and "*.db" in ignored


def test_compose_services_and_mounts() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"kafka", "ingest", "worker", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"], "KRaft, no ZooKeeper"
    assert services["ingest"]["command"][0] == "publish"
    assert "CAMERA_URL" in services["ingest"]["command"][1], "the camera URL comes from the environment"
    assert services["worker"]["command"] == ["run"]
    named_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named_volumes, f"{name}: undeclared volume {source}"
    worker_env = services["worker"]["environment"]
    worker_mounts = {m.split(":")[1]: m.split(":")[0] for m in services["worker"]["volumes"]}
    assert worker_mounts[worker_env["FACEWATCH_CONFIG"]] == "./config/worker.yaml"
    prometheus_mounts = {m.split(":")[1]: m.split(":")[0] for m in services["prometheus"]["volumes"]}
    assert prometheus_mounts["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    grafana_mounts = {m.split(":")[1]: m.split(":")[0] for m in services["grafana"]["volumes"]}
    assert grafana_mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/facewatch.yaml").read_text())
    assert grafana_mounts[provider["providers"][0]["options"]["path"]] == "./grafana/dashboards"
    # The stop grace period covers the worker's drain.
    drain = yaml.safe_load((DEPLOY / "config/worker.yaml").read_text())["shutdown"]["drain_timeout_s"]
    assert int(services["worker"]["stop_grace_period"].rstrip("s")) > drain
    # The admin role reads the worker's config and store; its tokens (hashed) come from the environment.
    admin = services["admin"]
    assert admin["command"] == ["admin", "serve"] and admin["profiles"] == ["admin"]
    assert admin["volumes"] == services["worker"]["volumes"]
    assert admin["environment"]["FACEWATCH_ADMIN__TOKENS"].startswith("${ADMIN_TOKENS")
    assert admin["ports"] == ["127.0.0.1:8791:8791"]
    # No secrets in the file: passwords come from the environment.
    assert "${GRAFANA_ADMIN_PASSWORD" in services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]


def test_compose_scrape_targets_are_the_worker_and_the_ingest() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "facewatch"]
    hosts = [target.split(":") for static in job["static_configs"] for target in static["targets"]]
    targets = {host: int(port) for host, port in hosts}
    assert set(targets) == {"worker", "ingest"} and set(targets) <= set(compose["services"])
    worker = yaml.safe_load((DEPLOY / "config/worker.yaml").read_text())
    assert targets["worker"] == worker["http"]["port"]
    # The ingest runs on the defaults (no config file): its endpoints are on the default http.port.
    assert "FACEWATCH_CONFIG" not in (compose["services"]["ingest"].get("environment") or {})
    assert targets["ingest"] == load_settings().http.port
    assert worker["kafka"]["bootstrap_servers"].split(":")[0] in compose["services"]
    for name in ("worker", "ingest"):
        probe = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert f"127.0.0.1:{targets[name]}/readyz" in probe


def test_compose_kafka_keeps_its_log_on_the_volume_and_listens_for_the_host() -> None:
    # Regression: the volume was mounted at /var/lib/kafka/data while the apache/kafka image writes its log to
    # log.dirs=/tmp/kraft-combined-logs (its docker/server.properties): topics lived in the container.
    kafka = yaml.safe_load(COMPOSE.read_text())["services"]["kafka"]
    env = kafka["environment"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in kafka["volumes"]}
    assert env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data", "the image's declared VOLUME"
    assert mounts[env["KAFKA_LOG_DIRS"]] == "kafka-data"
    # A fixed cluster id: the log on the volume is formatted with it once and must match on every start.
    cluster_id = env["CLUSTER_ID"].split(":-", 1)[-1].rstrip("}")
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "a base64 UUID, as kafka-storage random-uuid makes"
    # A listener for commands on the host (facewatch publish --bootstrap localhost:9094), on loopback only.
    listeners = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert listeners["HOST"] == "localhost:9094" and listeners["PLAINTEXT"] == "kafka:9092"
    assert "HOST://:9094" in env["KAFKA_LISTENERS"].split(",")
    assert "HOST:PLAINTEXT" in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    assert "127.0.0.1:9094:9094" in kafka["ports"]


def test_compose_worker_config_passes_config_check() -> None:
    result = _run([sys.executable, "-m", "worker", "config", "check", "deploy/config/worker.yaml"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_config_check_rejects_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "worker.yaml"
    bad.write_text("frames:\n  enabled: true\n  topik: x\n")
    result = _run([sys.executable, "-m", "worker", "config", "check", str(bad)])
    assert result.returncode == 2 and "topik" in result.stderr
