"""Shared helpers of the deployment-file checks: paths, tools, and metric names in PromQL."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import require_component

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = ROOT / "helm" / "facewatch"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "facewatch.json"
RULES = DEPLOY / "prometheus" / "rules" / "facewatch.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests"
INSTALL_HINT = "install the test extra: pip install -c constraints.txt -e '.[test]'"

# Series Prometheus itself adds to every scrape target.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

# Suffixes of the series a metric family of each type exposes (OpenMetrics/text format of prometheus-client).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created", ""),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "unknown": ("",),
}


def find_tool(name: str) -> str | None:
    """A command from PATH or from the running Python's bin folder (a venv not on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else None


def require_tool(name: str) -> str:
    """The tool's path; skips (fails under REQUIRE_TEST_INFRA=1) when it is not installed."""
    path = find_tool(name)
    require_component(None if path else f"{name} not found; {INSTALL_HINT}")
    assert path is not None
    return path


def exported_families() -> dict[str, str]:
    """Metric family name -> type, as the worker's registry (worker.obs.metrics) reports them."""
    from worker.obs.metrics import Metrics

    return {family.name: family.type for family in Metrics().registry.collect()}


def exported_series_names() -> dict[str, str]:
    """Every series name the worker can expose -> its family name (e.g. x_total -> x, x_bucket -> x)."""
    names: dict[str, str] = {}
    for family, kind in exported_families().items():
        for suffix in _SUFFIXES.get(kind, ("",)):
            names[family + suffix] = family
    return names


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
_NUMBERS = {"inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric (and recording-rule) names an expression selects, e.g. ``rate(a_total[5m]) / b`` -> {a_total, b}.

    Strips strings, label matchers, ranges and grouping clauses; what remains and is not a function
    call, keyword or number is a metric name. Grafana variables ($x, ${x}) are removed first.
    """
    text = re.sub(r"\$\{?\w+\}?", "1", expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENT.finditer(text):
        token = match.group(0)
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # exponent of a number such as 1e-9
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function
        if token in _KEYWORDS or token.lower() in _NUMBERS:
            continue
        names.add(token)
    return names


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """PromQL of every panel target and of every query variable (label_values(metric, label) -> metric)."""
    exprs = [t["expr"] for p in dashboard_panels(dashboard) for t in p.get("targets", []) if t.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
        exprs.append(match.group(1) if match else query)
    return exprs


def load_rules() -> list[dict[str, Any]]:
    """Every rule (recording and alerting) of the rules file."""
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in load_rules() if "record" in rule}


def rule_exprs() -> list[str]:
    return [rule["expr"] for rule in load_rules()]


def raw_metric_names(exprs: list[str]) -> set[str]:
    """Names the expressions select that are not recording rules: what a worker must expose."""
    recorded = recorded_names()
    return {name for expr in exprs for name in promql_metric_names(expr)} - recorded
