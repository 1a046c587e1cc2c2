"""The chart's PrometheusRule checked by Prometheus's own ``promtool`` (Debian's ``prometheus`` package):
``promtool check rules`` on every value set that renders it, and ``promtool test rules`` with the unit
tests in ``tests/promtool/`` (input series for every alert: fires after its ``for:``, stays silent).
Whether the expressions hold on the server's real metrics is ``tests/test_prometheus.py``."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from pinned_tools import pinned_helm
from prometheus_harness import CHART, REPO, alerts, render, rule_file, the, tool

from predictor.serving import prometheus as metrics

PROMTOOL_TESTS = sorted((REPO / "tests" / "promtool").glob("*_test.yaml"))


@pytest.fixture(scope="module")
def helm() -> str:
    return pinned_helm()


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["-f", str(CHART / "ci" / "standard-keda-values.yaml")],
        ["--set", 'prometheusRule.selector=job=~"x|y"'],
    ],
    ids=["default", "standard-keda", "selector"],
)
def test_promtool_check_rules(helm, tmp_path, values):
    docs = render(helm, "--set", "prometheusRule.enabled=true", *values)
    proc = promtool("check", "rules", str(rule_file(docs, tmp_path / "rules.yaml")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 26 rules found" in proc.stdout  # 10 alerts, 2 x 7 recording rules, 2 per-version rules


def run_unit_tests(helm, tmp_path, *values: str) -> subprocess.CompletedProcess[str]:
    """The promtool unit tests against the rules rendered with ``values`` (rules.yaml next to them)."""
    rule_file(render(helm, "--set", "prometheusRule.enabled=true", *values), tmp_path / "rules.yaml")
    for test in PROMTOOL_TESTS:
        shutil.copy(test, tmp_path / test.name)
    return promtool("test", "rules", *(str(tmp_path / t.name) for t in PROMTOOL_TESTS))


def test_promtool_unit_tests_cover_every_alert(helm, tmp_path):
    assert PROMTOOL_TESTS
    proc = run_unit_tests(helm, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # every alert has a case where it fires and one where it stays silent
    text = "\n".join(t.read_text() for t in PROMTOOL_TESTS)
    for name in alerts(render(helm, "--set", "prometheusRule.enabled=true")):
        blocks = text.split(f"alertname: {name}\n")[1:] + text.split(f"alertname: {name}, ")[1:]
        assert any(b.lstrip().startswith("exp_alerts:\n") for b in blocks), f"{name} never fires in a test"
        assert any(b.lstrip().startswith("exp_alerts: []") for b in blocks), (
            f"{name} is never silent in a test"
        )


@pytest.mark.parametrize(
    "values",
    [
        ["--set-json", "prometheusRule.errorRatio=0.05"],  # 2% of 500s no longer fire
        ["--set-json", "prometheusRule.slo.availability=0.99"],  # burn thresholds 10x higher
        ["--set-json", "prometheusRule.slo.latency.thresholdSeconds=1"],  # other bucket: no slow requests
        ["--set", "prometheusRule.for=5m"],
    ],
    ids=["errorRatio", "availability", "latency-bound", "for"],
)
def test_promtool_unit_tests_fail_for_other_thresholds(helm, tmp_path, values):
    """The unit tests pin the chart's defaults: other values make them fail."""
    proc = run_unit_tests(helm, tmp_path, *values)
    assert proc.returncode != 0 and "FAILED" in proc.stdout + proc.stderr


def test_latency_objectives_are_bucket_bounds():
    """The schema's allowed latency bounds are ``ssd_request_seconds`` bucket bounds, so the recording
    rule's ``le`` selects a real bucket."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    slo = schema["properties"]["prometheusRule"]["properties"]["slo"]["properties"]
    allowed = slo["latency"]["properties"]["thresholdSeconds"]["enum"]
    assert set(allowed) <= set(metrics.REQUEST_SECONDS_BUCKETS)


def test_latency_rule_le_is_the_exporters_spelling(helm):
    """prometheus_client writes bucket bounds as ``1.0`` / ``0.5``: the rule must too."""
    for bound, le in ((1, 'le="1.0"'), (0.5, 'le="0.5"'), (2.5, 'le="2.5"')):
        docs = render(
            helm,
            "--set",
            "prometheusRule.enabled=true",
            "--set-json",
            f"prometheusRule.slo.latency.thresholdSeconds={bound}",
        )
        groups = [g for g in the(docs, "PrometheusRule")["spec"]["groups"] if g["name"].endswith(".slo")]
        assert le in groups[0]["rules"][1]["expr"]
    bad = subprocess.run(
        [helm, "template", "r", str(CHART), "--set-json", "prometheusRule.slo.latency.thresholdSeconds=0.3"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "thresholdSeconds" in bad.stderr
