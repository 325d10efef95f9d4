"""The metric-name extractor the dashboard and rule checks rely on."""

from __future__ import annotations

from tests.ops.opsfiles import promql_metric_names


def test_extracts_metrics_not_functions_labels_or_keywords() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, stage) (rate(a_bucket{job="x", stage=~"$s"}[$__rate_interval])))'
        " / on (instance) group_left (camera) b_total offset 5m and c:recorded > 1e-9 unless up == bool 0"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "c:recorded", "up"}


def test_label_names_in_strings_and_grouping_are_not_metrics() -> None:
    assert promql_metric_names('sum without (reason) (x{reason="rate(y)"})') == {"x"}
    assert promql_metric_names("max by (topic, partition) (lag)") == {"lag"}
