"""The chart's recording rules split traffic by model version (the stable/canary split of a rollout):
Prometheus' own ``promtool test rules`` evaluates them on series shaped like the server's
(``ssd_requests_total`` per pod, ``ssd_model_info{version}`` one per pod)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml
from pinned_tools import pinned_helm

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "ssd-detector"

# Two pods of version v1 (60 and 54 answers a minute) and one canary pod of v2 (6 a minute): 1.9/s and
# 0.1/s; images with 2 and 1.8 (v1) and 1 (v2) detections each.
SERIES = [
    ('ssd_requests_total{namespace="vision",pod="a",protocol="v1",status="200"}', "0+60x30"),
    ('ssd_requests_total{namespace="vision",pod="b",protocol="v2",status="200"}', "0+54x30"),
    ('ssd_requests_total{namespace="vision",pod="c",protocol="v1",status="200"}', "0+6x30"),
    ('ssd_detections_per_image_sum{namespace="vision",pod="a"}', "0+120x30"),
    ('ssd_detections_per_image_count{namespace="vision",pod="a"}', "0+60x30"),
    ('ssd_detections_per_image_sum{namespace="vision",pod="b"}', "0+108x30"),
    ('ssd_detections_per_image_count{namespace="vision",pod="b"}', "0+54x30"),
    ('ssd_detections_per_image_sum{namespace="vision",pod="c"}', "0+6x30"),
    ('ssd_detections_per_image_count{namespace="vision",pod="c"}', "0+6x30"),
    ('ssd_model_info{namespace="vision",pod="a",model="ssd",version="v1"}', "1x30"),
    ('ssd_model_info{namespace="vision",pod="b",model="ssd",version="v1"}', "1x30"),
    ('ssd_model_info{namespace="vision",pod="c",model="ssd",version="v2"}', "1x30"),
    # A pod of the same name in another namespace the selector takes in: joined on namespace and pod.
    ('ssd_requests_total{namespace="other",pod="c",protocol="v1",status="200"}', "0+12x30"),
    ('ssd_model_info{namespace="other",pod="c",model="ssd",version="v9"}', "1x30"),
]


def rule_groups() -> list[dict]:
    proc = subprocess.run(
        [
            pinned_helm(),
            "template",
            "ssd",
            str(CHART),
            "-n",
            "vision",
            "--set",
            "prometheusRule.enabled=true",
            "--set-string",
            'prometheusRule.selector=namespace=~"vision|other"',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    (rule,) = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def test_recording_rules_split_requests_and_detections_by_version(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is missing: make system-deps"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    expected = {
        "ssd:requests:rate5m_by_version": [
            ('{namespace="vision",version="v1",status="200"}', 1.9),
            ('{namespace="vision",version="v2",status="200"}', 0.1),
            ('{namespace="other",version="v9",status="200"}', 0.2),
        ],
        "ssd:detections_per_image:mean1h_by_version": [
            ('{namespace="vision",version="v1"}', 2.0),
            ('{namespace="vision",version="v2"}', 1.0),
        ],
    }
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in SERIES],
                "promql_expr_test": [
                    {
                        "expr": name,
                        "eval_time": "20m",
                        "exp_samples": [
                            {"labels": name + labels, "value": value} for labels, value in samples
                        ],
                    }
                    for name, samples in expected.items()
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(tests))
    proc = subprocess.run(
        [promtool, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
