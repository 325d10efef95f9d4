"""The Helm chart, checked offline with the Helm v4 SDK: render, lint, schema, Kubernetes schemas, contents."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_component
from tests.ops.opsfiles import CHART, DASHBOARD, ROOT, RULES, load_dashboard, require_tool
from worker.config import Settings, load_settings

try:
    import helm_python as helm
except ImportError:  # the test extra is not installed
    helm = None

FULL_VALUES = CHART / "ci" / "values-full.yaml"
KUBE_VERSION = "1.32.0"
# Custom resources: kubernetes-validate has no schema for them; the tests check their fields here.
CUSTOM_KINDS = {"ServiceMonitor", "ScaledObject", "PrometheusRule"}


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    require_component(None if helm else "helm-python-sdk is not installed (pip install -e '.[test]')")
    with helm.Chart.load(str(CHART)) as loaded:
        yield loaded


def full_values() -> dict[str, Any]:
    return yaml.safe_load(FULL_VALUES.read_text())


def render(chart: Any, values: dict[str, Any] | None = None) -> dict[str, str]:
    return chart.render(values, name="fw", namespace="facewatch")


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for name, text in rendered.items():
        if name.endswith(".yaml"):
            docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def worker_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-worker")]
    return deployment


def with_changes(base: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in (nested dicts merge, everything else replaces)."""
    merged = copy.deepcopy(base or {})

    def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(merged, changes)
    return merged


# -- render, lint, schema ---------------------------------------------------------------------


@pytest.mark.parametrize("values_name", ["default", "full"])
def test_renders(chart: Any, values_name: str) -> None:
    values = full_values() if values_name == "full" else None
    docs = objects(render(chart, values))
    kinds = {doc["kind"] for doc in docs}
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ServiceAccount"} <= kinds
    assert {"NetworkPolicy", "Pod"} <= kinds, "network policies and the helm test pod are on by default"
    optional = {"ScaledObject", "ServiceMonitor", "Secret", "PersistentVolumeClaim", "PrometheusRule"}
    if values_name == "default":
        assert "HorizontalPodAutoscaler" in kinds
        assert not kinds & optional
        assert [d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")] == ["fw-facewatch-config"]
    else:
        assert optional <= kinds
        assert "HorizontalPodAutoscaler" not in kinds, "KEDA makes its own HPA"
        assert "NetworkPolicy" in kinds
        assert len(by_kind(docs, "Deployment")) == 2 + len(full_values()["ingest"]["cameras"])  # worker, admin
    names = [(doc["kind"], doc["metadata"]["name"]) for doc in docs]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("values_name", ["default", "full"])
def test_lint_is_clean(values_name: str) -> None:
    require_component(None if helm else "helm-python-sdk is not installed")
    values = full_values() if values_name == "full" else None
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_lint_reports_bad_values() -> None:
    require_component(None if helm else "helm-python-sdk is not installed")
    report = helm.lint(str(CHART), {"worker": {"replica": 2}}, strict=True)
    assert report["errors"], report
    assert any("replica" in error for error in report["errors"])


@pytest.mark.parametrize("values_name", ["default", "full"])
def test_good_values_pass_the_schema(chart: Any, values_name: str) -> None:
    chart.validate_schema(full_values() if values_name == "full" else None)
    chart.validate_schema(chart.values)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"unknownTopLevel": 1}, "unknownTopLevel"),
        ({"worker": {"replica": 2}}, "replica"),
        ({"worker": {"gpu": -1}}, "gpu"),
        ({"config": {"kafka": {"sasl_password": "hunter2"}}}, "FACEWATCH_KAFKA__SASL_PASSWORD"),
        ({"config": {"frames": {"enabled": False}}}, "enabled"),
        ({"config": {"frames": None}}, "missing property 'frames'"),
        ({"config": {"nosuchsection": {}}}, "nosuchsection"),
        # The config part is generated from worker/config.py: a typo or a wrong type inside a section fails too.
        ({"config": {"pipeline": {"lane": 4}}}, "lane"),
        ({"config": {"pipeline": {"lanes": "many"}}}, "lanes"),
        ({"config": {"detector": {"name": "yolo"}}}, "name"),
        ({"config": {"decisions": {"cooldown_s": -1}}}, "cooldown_s"),
        ({"config": {"http": {"port": 0}}}, "port"),
        ({"config": {"cameras": [{"id": "door", "ur": "rtsp://cam/1"}]}}, "ur"),
        ({"networkPolicy": {"kafka": {"ports": [0]}}}, "ports"),
        ({"grafanaDashboard": {"lable": "x"}}, "lable"),
        ({"ingest": {"cameras": [{"id": "has space", "url": "rtsp://cam/1"}]}}, "id"),
        ({"ingest": {"cameras": [{"id": "door", "url": "http://cam/1"}]}}, "url"),
        ({"ingest": {"cameras": [{"id": "door"}]}}, "url"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"keda": {"maxReplicas": 0}}, "maxReplicas"),
        ({"framesTopicPartitions": 0}, "framesTopicPartitions"),
        ({"worker": {"extraEnv": [{"name": "KAFKA_PASSWORD", "value": "x"}]}}, "extraEnv"),
    ],
)
def test_bad_values_are_rejected_with_a_message(chart: Any, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(changes)
    assert message in str(caught.value)
    # Rendering (what install does) refuses them too.
    with pytest.raises(helm.HelmError):
        render(chart, changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"autoscaling": {"enabled": False}, "keda": {"enabled": True, "maxReplicas": 5}},
            "keda.maxReplicas (5) is more than framesTopicPartitions (4)",
        ),
        ({"autoscaling": {"maxReplicas": 6}}, "autoscaling.maxReplicas (6) is more than framesTopicPartitions (4)"),
        ({"autoscaling": {"enabled": False}, "worker": {"replicas": 9}}, "worker.replicas (9)"),
        ({"keda": {"enabled": True}}, "mutually exclusive"),
        ({"secrets": {"existingSecret": "mine", "create": True}}, "mutually exclusive"),
        ({"config": {"watchlist": {"store": "/tmp/w.db"}}}, "must be inside watchlist.mountPath"),
        (
            {"ingest": {"cameras": [{"id": "door", "url": "rtsp://a/1"}, {"id": "door", "url": "rtsp://b/1"}]}},
            'camera id "door" is used twice',
        ),
    ],
)
def test_template_checks_fail_the_render(chart: Any, changes: dict[str, Any], message: str) -> None:
    chart.validate_schema(changes)  # schema-valid: only the templates can catch these
    with pytest.raises(helm.HelmRenderError) as caught:
        render(chart, changes)
    assert message in str(caught.value)


def test_keda_max_replicas_up_to_the_partitions_renders(chart: Any) -> None:
    values = {
        "autoscaling": {"enabled": False},
        "keda": {"enabled": True, "maxReplicas": 8},
        "framesTopicPartitions": 8,
    }
    (scaled,) = by_kind(objects(render(chart, values)), "ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] == 8


def test_keda_can_scale_on_the_workers_group_lag_from_prometheus(chart: Any) -> None:
    # Issue 11, item 5: the workers export the group's committed-offset lag; KEDA may read it from Prometheus.
    values = with_changes(
        full_values(),
        {"keda": {"lagThreshold": 250, "prometheus": {"serverAddress": "http://prometheus.monitoring.svc:9090"}}},
    )
    (scaled,) = by_kind(objects(render(chart, values)), "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    topic = full_values()["config"]["frames"]["topic"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["serverAddress"] == "http://prometheus.monitoring.svc:9090"
    query = trigger["metadata"]["query"]
    assert query == f'sum(max by (topic, partition) (facewatch_kafka_consumer_group_lag{{topic="{topic}"}}))'
    assert trigger["metadata"]["threshold"] == "250"
    assert all(isinstance(v, str) for v in trigger["metadata"].values()), "KEDA trigger metadata are strings"


# -- Kubernetes schemas -----------------------------------------------------------------------


@pytest.mark.parametrize("values_name", ["default", "full"])
def test_manifests_pass_kubernetes_validate(chart: Any, values_name: str, tmp_path: Path) -> None:
    tool = require_tool("kubernetes-validate")
    values = full_values() if values_name == "full" else None
    docs = objects(render(chart, values))
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    result = subprocess.run(
        [tool, "--strict", "-k", KUBE_VERSION, str(path)], capture_output=True, text=True, timeout=300, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = [line for line in output.splitlines() if line.startswith("INFO") and " passed " in line]
    builtin = [doc for doc in docs if doc["kind"] not in CUSTOM_KINDS]
    assert len(passed) == len(builtin), output
    for line in output.splitlines():
        if line.startswith(("WARN", "ERROR")):
            assert any(f"kind {kind} " in line for kind in CUSTOM_KINDS), line


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path: Path) -> None:
    tool = require_tool("kubernetes-validate")
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}, "dataa": {}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = subprocess.run(
        [tool, "--strict", "-k", KUBE_VERSION, str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0


def test_custom_resources_have_their_required_fields(chart: Any) -> None:
    docs = objects(render(chart, full_values()))
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    # The admin API's Service is not scraped by this monitor (it has its own /metrics on the API port).
    services = [
        s for s in by_kind(docs, "Service") if s["metadata"]["labels"]["app.kubernetes.io/component"] != "admin"
    ]
    assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in services} == {"worker", "ingest"}
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    for service in services:  # the ServiceMonitor scrapes the workers and the ingests
        labels = service["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "facewatch", "job label the rules select"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert expression["operator"] == "In" and labels[expression["key"]] in expression["values"]
        assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    (scaled,) = by_kind(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker_deployment(docs)["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    config = full_values()["config"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == config["frames"]["topic"]
    assert trigger["metadata"]["consumerGroup"] == config["frames"]["group_id"]
    assert trigger["authenticationRef"]["name"] == "kafka-sasl"
    assert all(isinstance(v, str) for v in trigger["metadata"].values()), "KEDA trigger metadata are strings"


# -- contents ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", ["default", "full"])
def test_worker_pod(chart: Any, values_name: str, tmp_path: Path) -> None:
    values = full_values() if values_name == "full" else None
    docs = objects(render(chart, values))
    deployment = worker_deployment(docs)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (config_map,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config")]

    # The rendered config is one the worker accepts.
    config_file = tmp_path / "worker.yaml"
    config_file.write_text(config_map["data"]["worker.yaml"])
    settings = load_settings(config_file)
    assert settings.frames.enabled

    # Probes on the worker's endpoints, on its HTTP port.
    (port,) = container["ports"]
    assert port["containerPort"] == settings.http.port and port["name"] == "metrics"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Kubernetes waits longer than the worker drains.
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown.drain_timeout_s
    # Non-root, read-only root filesystem.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # Config from the ConfigMap; the watchlist store on its own writable volume.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert Path(env["FACEWATCH_CONFIG"]).parent.as_posix() in mounts
    store_dir = str(Path(str(settings.watchlist.store)).parent)
    assert mounts[store_dir] == "watchlist"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert "/tmp" in mounts
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )

    limits = container["resources"].get("limits", {})
    if values_name == "full":
        assert limits["nvidia.com/gpu"] == 1
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert volumes["watchlist"]["persistentVolumeClaim"]["claimName"].endswith("-watchlist")
        assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    else:
        assert "nvidia.com/gpu" not in limits
        assert "emptyDir" in volumes["watchlist"]


def test_grace_period_follows_the_drain_timeout(chart: Any) -> None:
    docs = objects(render(chart, {"config": {"shutdown": {"drain_timeout_s": 90.5}}}))
    assert worker_deployment(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 91 + 10


def test_secrets_reach_pods_only_through_a_secret(chart: Any) -> None:
    values = full_values()
    docs = objects(render(chart, values))
    (secret,) = [s for s in by_kind(docs, "Secret") if not s["metadata"]["name"].endswith("-admin-tokens")]
    assert secret["stringData"] == values["secrets"]["env"]
    (config_map,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config")]
    for value in values["secrets"]["env"].values():
        assert value not in yaml.safe_dump(config_map)
    for deployment in by_kind(docs, "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
        assert all("valueFrom" in e or "PASSWORD" not in e["name"] for e in container["env"])

    existing = objects(render(chart, {"secrets": {"existingSecret": "facewatch-credentials"}}))
    assert not by_kind(existing, "Secret")
    (container,) = worker_deployment(existing)["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "facewatch-credentials"}}]


def test_one_ingest_per_camera(chart: Any) -> None:
    values = full_values()
    docs = objects(render(chart, values))
    ingests = [
        d for d in by_kind(docs, "Deployment") if d["metadata"]["labels"]["app.kubernetes.io/component"] == "ingest"
    ]
    cameras = values["ingest"]["cameras"]
    assert len(ingests) == len(cameras)
    for camera, deployment in zip(cameras, ingests, strict=True):
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        assert args[:2] == ["publish", camera["url"]]
        assert args[args.index("--camera") + 1] == camera["id"]
        assert args[args.index("--topic") + 1] == values["config"]["frames"]["topic"]
        assert args[args.index("--bootstrap") + 1] == values["config"]["kafka"]["bootstrap_servers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        # /metrics and probes on the http.port of the config it reads (the ConfigMap, as the workers).
        (port,) = container["ports"]
        assert port == {"name": "metrics", "containerPort": values["config"]["http"]["port"], "protocol": "TCP"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert {"name": "FACEWATCH_CONFIG", "value": "/etc/facewatch/worker.yaml"} in container["env"]
    (service,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-ingest")]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= ingests[0]["spec"]["template"]["metadata"]["labels"].items()


def test_default_autoscaling_is_a_cpu_hpa_within_the_partitions(chart: Any) -> None:
    docs = objects(render(chart))
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["maxReplicas"] <= chart.values["framesTopicPartitions"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["scaleTargetRef"]["name"] == worker_deployment(docs)["metadata"]["name"]
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == worker_deployment(docs)["spec"]["selector"]["matchLabels"]


def test_config_change_rolls_the_workers(chart: Any) -> None:
    def checksum(values: dict[str, Any] | None) -> str:
        annotations = worker_deployment(objects(render(chart, values)))["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    assert checksum(None) != checksum({"config": {"pipeline": {"lanes": 4}}})


def test_notes_render(chart: Any) -> None:
    notes = render(chart, full_values())["facewatch/templates/NOTES.txt"]
    assert "KEDA" in notes and "biometric" in notes


def _admin(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == "fw-facewatch-admin"]
    return found


def test_the_admin_role(chart: Any) -> None:
    values = full_values()
    docs = objects(render(chart, values))
    deployment = _admin(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["admin", "serve"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FACEWATCH_ADMIN__HOST"] == "0.0.0.0" and env["FACEWATCH_ADMIN__PORT"] == "8791"
    # The tokens file is the Secret's hashed lines, mounted read-only where the config points.
    (tokens,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("-admin-tokens")]
    assert tokens["stringData"]["tokens"].split() == values["admin"]["tokens"]["lines"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert env["FACEWATCH_ADMIN__TOKENS_FILE"] == mounts["tokens"]["mountPath"] + "/tokens"
    assert mounts["tokens"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tokens"]["secret"]["secretName"] == tokens["metadata"]["name"]
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"  # uploads never touch the node's disk
    # Its store is its own volume, at the path of config.watchlist.store.
    assert values["config"]["watchlist"]["store"].startswith(mounts["store"]["mountPath"] + "/")
    assert _admin(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
    service = _admin(docs, "Service")
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["ports"][0]["port"] == 8791
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    policy = _admin(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == values["admin"]["networkPolicy"]["from"] and rule["ports"][0]["port"] == "admin"
    dns, kafka = policy["spec"]["egress"]  # out: DNS and the brokers only
    assert {p["port"] for p in dns["ports"]} == {53}
    assert kafka["to"] == values["networkPolicy"]["kafka"]["to"] and {p["port"] for p in kafka["ports"]} == {9093}

    ingress = _admin(docs, "Ingress")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == values["admin"]["ingress"]["host"] == ingress["spec"]["tls"][0]["hosts"][0]
    assert rule["http"]["paths"][0]["backend"]["service"] == {
        "name": service["metadata"]["name"],
        "port": {"name": "admin"},
    }
    assert ingress["spec"]["tls"][0]["secretName"] == values["admin"]["ingress"]["tlsSecretName"]

    closed = objects(render(chart, with_changes(values, {"admin": {"networkPolicy": {"from": []}}})))
    assert _admin(closed, "NetworkPolicy")["spec"]["ingress"] == []  # admits nothing
    assert not [d for d in objects(render(chart)) if "admin" in d["metadata"]["name"]]  # off by default


def test_the_admin_ingress_needs_a_host(chart: Any) -> None:
    values = with_changes(full_values(), {"admin": {"ingress": {"host": ""}}})
    with pytest.raises(Exception, match=r"admin\.ingress\.host"):
        render(chart, values)
    off = objects(render(chart, with_changes(full_values(), {"admin": {"ingress": {"enabled": False}}})))
    assert not by_kind(off, "Ingress")


def test_the_admin_role_needs_tokens(chart: Any) -> None:
    with pytest.raises(Exception, match=r"admin\.tokens\.lines"):
        render(chart, {"admin": {"enabled": True}})
    with pytest.raises(Exception, match="admin"):
        chart.validate_schema({"admin": {"enabled": True, "tokens": {"lines": ["alice:admin:fw_the-token-itself"]}}})
    existing = objects(render(chart, {"admin": {"enabled": True, "tokens": {"existingSecret": "mine"}}}))
    assert not by_kind(existing, "Secret")
    assert _admin(existing, "Deployment")["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"] == "mine"


# -- values schema generated from the settings --------------------------------------------------


def test_values_schema_config_is_generated_from_the_settings() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chart_values_schema.py"), "--check"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    config = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == set(Settings.model_fields)
    for name, section in config["properties"].items():
        schema = section["items"] if section["type"] == "array" else section
        assert schema["additionalProperties"] is False, name
        model = Settings.model_fields[name].annotation
        model = model.__args__[0] if section["type"] == "array" else model  # list[CameraConfig]
        assert set(schema["properties"]) == set(model.model_fields), name


def test_lint_rejects_a_typo_inside_config() -> None:
    # Regression: config was free-form below its sections, so a typo passed lint and crash-looped the pods.
    require_component(None if helm else "helm-python-sdk is not installed")
    report = helm.lint(str(CHART), {"config": {"pipeline": {"detect_evry": 3}}}, strict=True)
    assert any("detect_evry" in error for error in report["errors"]), report


# -- monitoring: rules, dashboard --------------------------------------------------------------


def test_prometheus_rule_is_the_rules_file(chart: Any) -> None:
    assert (CHART / "files" / RULES.name).read_bytes() == RULES.read_bytes(), f"copy {RULES} to {CHART}/files/"
    (rule,) = by_kind(objects(render(chart, full_values())), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]
    assert any("{{ $labels.instance }}" in a["annotations"]["summary"] for a in alerts), "not templated by Helm"


def test_dashboard_config_map_is_the_dashboard(chart: Any) -> None:
    assert (CHART / "files" / DASHBOARD.name).read_bytes() == DASHBOARD.read_bytes(), f"copy {DASHBOARD}"
    docs = objects(render(chart, full_values()))
    (config_map,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1", "the Grafana sidecar's default label"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Facewatch"}
    (name,) = config_map["data"]
    assert name.endswith(".json") and json.loads(config_map["data"][name]) == load_dashboard()


# -- network policies ---------------------------------------------------------------------------


def _policies(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"] for p in by_kind(docs, "NetworkPolicy")}


def _egress_ports(policy: dict[str, Any]) -> set[tuple[Any, str]]:
    return {(port["port"], port["protocol"]) for rule in policy["egress"] for port in rule["ports"]}


@pytest.mark.parametrize("values_name", ["default", "full"])
def test_network_policies_allow_scraping_dns_kafka_and_cameras_only(chart: Any, values_name: str) -> None:
    values = full_values() if values_name == "full" else None
    docs = objects(render(chart, values))
    policies = _policies(docs)
    kafka = {9093} if values_name == "full" else {9092}  # the ports of config.kafka.bootstrap_servers
    dns = {(53, "UDP"), (53, "TCP")}
    policies.pop("admin", None)  # the admin role's own policy: test_the_admin_role
    assert set(policies) == ({"worker", "ingest"} if values_name == "full" else {"worker"})
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in by_kind(docs, "Deployment")}
    for component, policy in policies.items():
        pod_labels = deployments[component]["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        (ingress,) = policy["ingress"]
        assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
        expected = dns | {(port, "TCP") for port in kafka} | ({(554, "TCP")} if component == "ingest" else set())
        assert _egress_ports(policy) == expected
    if values_name == "full":
        # Scraping only from the monitoring namespace, and the helm test pod.
        (test_pod,) = by_kind(docs, "Pod")
        peers = policies["worker"]["ingress"][0]["from"]
        assert peers[0] == full_values()["networkPolicy"]["metricsFrom"][0]
        assert peers[1]["podSelector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items()
        camera_rule = [r for r in policies["ingest"]["egress"] if r["ports"] == [{"port": 554, "protocol": "TCP"}]]
        assert camera_rule[0]["to"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}]


def test_network_policy_ports_come_from_the_urls(chart: Any) -> None:
    values = {
        "config": {"kafka": {"bootstrap_servers": "b1:9095, b2:9095,b3"}},
        "ingest": {
            "cameras": [
                {"id": "a", "url": "rtsp://user:$(PASSWORD)@10.0.0.5:8554/live"},
                {"id": "b", "url": "rtsps://cam.example/stream"},
                {"id": "c", "url": "rtsp://10.0.0.7/stream"},
                {"id": "d", "url": "/videos/lobby.mp4"},
            ]
        },
    }
    policies = _policies(objects(render(chart, values)))
    assert _egress_ports(policies["worker"]) == {(53, "UDP"), (53, "TCP"), (9095, "TCP"), (9092, "TCP")}
    assert _egress_ports(policies["ingest"]) - _egress_ports(policies["worker"]) == {
        (8554, "TCP"), (322, "TCP"), (554, "TCP")
    }  # fmt: skip
    overridden = _policies(
        objects(render(chart, with_changes(values, {"networkPolicy": {"kafka": {"ports": [9094]}}})))
    )
    assert (9094, "TCP") in _egress_ports(overridden["worker"]) and (9095, "TCP") not in _egress_ports(
        overridden["worker"]
    )
    assert not _policies(objects(render(chart, {"networkPolicy": {"enabled": False}})))


# -- helm test ----------------------------------------------------------------------------------


def test_helm_test_pod_checks_the_worker_service(chart: Any) -> None:
    docs = objects(render(chart))
    (pod,) = by_kind(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    assert container["command"][:2] == ["python", "-c"]
    assert container["command"][2].strip() == (CHART / "files" / "helm-test.py").read_text().strip()
    url, wait = container["command"][3:]
    (service,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-worker")]
    assert url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert int(wait) == chart.values["tests"]["readyTimeoutSeconds"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert not by_kind(objects(render(chart, {"tests": {"enabled": False}})), "Pod")


@pytest.mark.parametrize("ready", [True, False])
def test_helm_test_script_against_real_endpoints(ready: bool) -> None:
    """The test pod's script, run against the worker's real HTTP server (worker/obs/http.py)."""
    from worker.obs.http import HealthServer
    from worker.obs.metrics import Metrics

    metrics = Metrics()
    metrics.build.info({"version": "test"})
    metrics.ready.set(1 if ready else 0)
    server = HealthServer(
        metrics.registry, lambda: (True, {}), lambda: (ready, {"problems": [] if ready else ["models loading"]}),
        "127.0.0.1", 0,
    )  # fmt: skip
    server.start()
    try:
        result = subprocess.run(
            [sys.executable, "-c", (CHART / "files" / "helm-test.py").read_text(), f"http://127.0.0.1:{server.port}",
             "1"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        server.stop()
    if ready:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "readyz: 200" in result.stdout
    else:
        assert result.returncode == 1
        assert "not ready within 1 s" in result.stderr and "models loading" in result.stderr
