"""Prometheus rules and the Grafana dashboard: promtool checks, structure, and metric names the worker exports."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_component
from tests.infra import prometheus_server
from tests.ops.opsfiles import (
    DASHBOARD,
    DEPLOY,
    PROMETHEUS_SYNTHETIC,
    RULE_TESTS,
    RULES,
    dashboard_exprs,
    dashboard_panels,
    exported_series_names,
    load_dashboard,
    load_rules,
    raw_metric_names,
    recorded_names,
    rule_exprs,
)

PROVISIONING = DEPLOY / "grafana" / "provisioning"


def _promtool() -> str:
    require_component(prometheus_server.promtool_unavailable_reason())
    path = prometheus_server.find_promtool()
    assert path is not None
    return path


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


# -- Prometheus -------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = _run([_promtool(), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    test_files = sorted(RULE_TESTS.glob("*.yml"))
    assert test_files, f"no promtool tests in {RULE_TESTS}"
    result = _run([_promtool(), "test", "rules", *map(str, test_files)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_fails_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests can fail: an alert expected to fire on a healthy series is reported."""
    wrong = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": 'up{job="facewatch", instance="w1:8790"}', "values": "1x10"}],
                "alert_rule_test": [
                    {
                        "alertname": "FacewatchWorkerDown",
                        "eval_time": "5m",
                        "exp_alerts": [{"exp_labels": {"severity": "critical", "instance": "w1:8790"}}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "wrong.test.yml"
    path.write_text(yaml.safe_dump(wrong))
    result = _run([_promtool(), "test", "rules", str(path)])
    assert result.returncode != 0
    assert "FacewatchWorkerDown" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    alerts = {rule["alert"] for rule in load_rules() if "alert" in rule}
    fired: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS.glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert alerts - fired == set(), "alerts never shown firing"
    assert alerts - silent == set(), "alerts never shown silent"
    assert {
        "FacewatchWorkerDown",
        "FacewatchKafkaLagGrowing",
        "FacewatchDecodeErrors",
        "FacewatchDeadLetters",
    } <= alerts
    assert {"FacewatchCameraDisconnected", "FacewatchCameraNoFrames", "FacewatchFrameToEventLatencyHigh"} <= alerts


def test_alerts_have_severity_and_summary() -> None:
    for rule in load_rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-kubernetes.yml"])
def test_promtool_check_config(name: str, tmp_path: Path) -> None:
    # The configs name the in-container rules path; check them with the rules beside them instead.
    config = yaml.safe_load((DEPLOY / "prometheus" / name).read_text())
    config["rule_files"] = [str(RULES)]
    for job in config["scrape_configs"]:
        # Debian's Prometheus is built without Kubernetes discovery; the relabelling is still checked.
        if "kubernetes_sd_configs" in job:
            assert [sd["role"] for sd in job.pop("kubernetes_sd_configs")] == ["pod"]
            job["static_configs"] = [{"targets": ["127.0.0.1:8790"]}]
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    result = _run([_promtool(), "check", "config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert "facewatch" in jobs, "rules and dashboard select job=facewatch"


def test_rule_metric_names_are_exported_by_the_worker() -> None:
    exported = set(exported_series_names()) | PROMETHEUS_SYNTHETIC
    used = raw_metric_names(rule_exprs())
    assert used, "no metric names found in the rules"
    assert used - exported == set(), "rules use metrics the worker does not export"
    # Recording rules are only used where they are defined.
    for expr in rule_exprs():
        for name in [n for n in raw_metric_names([expr]) if ":" in n]:
            pytest.fail(f"{expr!r} uses recording rule {name} that the rules file does not define")


def test_name_check_rejects_an_unknown_metric() -> None:
    exported = set(exported_series_names())
    assert raw_metric_names(["rate(facewatch_frames_recieved_total[5m])"]) - exported == {
        "facewatch_frames_recieved_total"
    }
    # A counter's family name without _total is not a series Prometheus stores.
    assert "facewatch_frames_received" not in exported
    assert "facewatch_frames_received_total" in exported


# -- Grafana ----------------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0 and grid["y"] >= 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"], panel
        assert panel["targets"], f"panel {panel['title']!r} has no queries"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]
            for var in ("$instance", "$camera"):
                if var in target["expr"]:
                    assert var[1:] in variables
    # Panels do not overlap.
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another at {(x, y)}"
                cells.add((x, y))


def test_dashboard_covers_the_operational_questions() -> None:
    exprs = "\n".join(dashboard_exprs(load_dashboard()))
    for needed in (
        "facewatch_frames_received_total",
        "facewatch_frames_decoded_total",
        "facewatch_frames_dropped_total",
        "facewatch_stage_duration_seconds_bucket",
        "facewatch_frame_to_event_seconds_bucket",
        "facewatch_embedding_batch_size_bucket",
        "facewatch_kafka_consumer_lag",
        "facewatch_kafka_consumer_group_lag",
        "facewatch_decode_errors_total",
        "facewatch_dead_letter_messages_total",
        "facewatch_rtsp_reconnects_total",
        "facewatch_matches_total",
        'outcome="unknown"',
        "facewatch_watchlist_identities",
        "facewatch_watchlist_version",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "facewatch_device_info",
        "facewatch_visitors_new_total",
        'returning="true"',
        "facewatch_visit_dwell_seconds_bucket",
        "facewatch_visits_open",
    ):
        assert needed in exprs, f"dashboard lacks {needed}"
    assert "histogram_quantile(" in exprs


def test_dashboard_metric_names_are_exported_by_the_worker() -> None:
    exported = set(exported_series_names()) | PROMETHEUS_SYNTHETIC
    used = raw_metric_names(dashboard_exprs(load_dashboard()))
    assert len(used) > 15
    assert used - exported == set(), "dashboard uses metrics the worker does not export"
    assert not (used & recorded_names()), "the dashboard must work without the recording rules"


def test_grafana_provisioning() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["uid"]
    current = {v["name"]: v for v in load_dashboard()["templating"]["list"]}["datasource"]["current"]["value"]
    assert current == source["uid"], "the dashboard's default data source is the provisioned one"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "facewatch.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    assert DASHBOARD.is_file()


def _exposition_with_every_series() -> bytes:
    """The worker's /metrics text with one child of every labelled metric, so each family shows samples."""
    from prometheus_client import generate_latest
    from prometheus_client.metrics import MetricWrapperBase

    from worker.obs.metrics import Metrics

    metrics = Metrics()
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            child = metric.labels(*["x"] * len(metric._labelnames))
            if hasattr(child, "inc"):
                child.inc()
            elif hasattr(child, "observe"):
                child.observe(1.0)
    return generate_latest(metrics.registry)


def test_worker_metrics_pass_promtool_lint() -> None:
    """Naming conventions (units, _total on counters only) as promtool checks them."""
    result = subprocess.run(
        [_promtool(), "check", "metrics"], input=_exposition_with_every_series(), capture_output=True, timeout=60
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_promtool_lint_catches_a_misnamed_counter() -> None:
    text = b"# HELP frames Frames.\n# TYPE frames counter\nframes 1\n"
    result = subprocess.run([_promtool(), "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert result.returncode != 0 and b"_total" in result.stdout + result.stderr
