"""A real Prometheus for the tests: Debian's ``prometheus`` and ``promtool`` (``make system-deps``).

- :func:`render` renders the chart (``helm template``) and :func:`rule_file` turns its PrometheusRule
  into a Prometheus rule file;
- :func:`podmonitor_scrape_config` derives a Prometheus scrape job from the rendered PodMonitor the way
  the Prometheus Operator does (``pkg/prometheus/promcfg.go``, ``generatePodMonitorConfig``: keep the pods
  the selector matches, copy namespace/container/pod into labels, ``job`` = ``<namespace>/<name>``, then
  the PodMonitor's own relabelings), with the pods given as static targets that carry the
  ``__meta_kubernetes_*`` labels Kubernetes service discovery would give them;
- :class:`Prometheus` runs the server on loopback (stopped by the test) and queries its HTTP API.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from predictor.tools.localserver import free_port

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "ssd-detector"
RELEASE = "ssd"
NAMESPACE = "vision"


def tool(name: str) -> str:
    """Path of ``prometheus`` or ``promtool``; fails (not skips) when the Debian package is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install -y prometheus (make system-deps installs it)")
    return path


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    """``helm template ssd helm/ssd-detector --namespace vision ARGS``: the rendered documents."""
    cmd = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def the(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} in {[d['kind'] for d in docs]}"
    return found[0]


def rule_file(docs: list[dict[str, Any]], path: Path) -> Path:
    """Write the rendered PrometheusRule's ``spec.groups`` as a Prometheus rule file."""
    rule = the(docs, "PrometheusRule")
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def alerts(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Alert name -> rule, from the rendered PrometheusRule."""
    groups = the(docs, "PrometheusRule")["spec"]["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


# PodMonitor RelabelConfig (camelCase, monitoring.coreos.com/v1) -> Prometheus relabel_config keys.
_RELABEL_KEYS = {
    "sourceLabels": "source_labels",
    "targetLabel": "target_label",
    "separator": "separator",
    "regex": "regex",
    "replacement": "replacement",
    "action": "action",
    "modulus": "modulus",
}


def _label(name: str) -> str:
    """A Kubernetes label name as service discovery spells it in ``__meta_kubernetes_pod_label_<name>``."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


@dataclass
class Pod:
    """A pod as Kubernetes service discovery (role pod) sees it: one target per declared container port."""

    name: str
    labels: dict[str, str]
    ip: str
    container: str
    ports: list[int]

    def label_values(self, label: str, match: str) -> list[str]:
        """``/api/v1/label/<label>/values?match[]=<match>`` (what Grafana's ``label_values`` asks)."""
        body = self._client.get(f"/api/v1/label/{label}/values", params={"match[]": match}).json()
        assert body["status"] == "success", body
        return body["data"]

    def targets(self) -> list[dict[str, Any]]:
        meta = {
            "__meta_kubernetes_namespace": NAMESPACE,
            "__meta_kubernetes_pod_name": self.name,
            "__meta_kubernetes_pod_container_name": self.container,
        }
        for key, value in self.labels.items():
            meta[f"__meta_kubernetes_pod_label_{_label(key)}"] = value
            meta[f"__meta_kubernetes_pod_labelpresent_{_label(key)}"] = "true"
        return [
            {
                "targets": [f"{self.ip}:{port}"],
                "labels": {**meta, "__meta_kubernetes_pod_container_port_number": str(port)},
            }
            for port in self.ports
        ]


def podmonitor_scrape_config(monitor: dict[str, Any], pods: list[Pod], interval: str) -> list[dict[str, Any]]:
    """One scrape job per ``podMetricsEndpoints`` entry, as the operator generates it; ``interval`` replaces
    the endpoint's (the test's short one), everything else comes from the PodMonitor."""
    meta, spec = monitor["metadata"], monitor["spec"]
    jobs = []
    for i, endpoint in enumerate(spec["podMetricsEndpoints"]):
        relabel: list[dict[str, Any]] = [
            {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
        ]
        for key, value in spec["selector"].get("matchLabels", {}).items():
            relabel.append(
                {
                    "action": "keep",
                    "source_labels": [
                        f"__meta_kubernetes_pod_label_{_label(key)}",
                        f"__meta_kubernetes_pod_labelpresent_{_label(key)}",
                    ],
                    "regex": f"({value});true",
                }
            )
        assert "matchExpressions" not in spec["selector"], "matchExpressions: not derived here"
        if "port" in endpoint:
            relabel.append(
                {
                    "action": "keep",
                    "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                    "regex": endpoint["port"],
                }
            )
        relabel += [
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "job", "replacement": f"{NAMESPACE}/{meta['name']}"},
        ]
        if "port" in endpoint:
            relabel.append({"target_label": "endpoint", "replacement": endpoint["port"]})
        relabel += [{_RELABEL_KEYS[k]: v for k, v in r.items()} for r in endpoint.get("relabelings", [])]
        jobs.append(
            {
                "job_name": f"podMonitor/{NAMESPACE}/{meta['name']}/{i}",
                "honor_labels": bool(endpoint.get("honorLabels", False)),
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "metrics_path": endpoint.get("path", "/metrics"),
                "scheme": endpoint.get("scheme", "http"),
                "static_configs": [t for pod in pods for t in pod.targets()],
                "relabel_configs": relabel,
            }
        )
    return jobs


class Prometheus:
    """``prometheus`` on a free loopback port with these scrape jobs and rule file (evaluated each 1 s)."""

    def __init__(
        self, workdir: Path, scrape_configs: list[dict[str, Any]], rules: Path | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": scrape_configs,
        }
        if rules is not None:
            config["rule_files"] = [str(rules)]
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        check = subprocess.run(
            [tool("promtool"), "check", "config", str(self.config)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        self.log_path = workdir / "prometheus.log"
        cmd = [
            tool("prometheus"),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._client = httpx.Client(base_url=self.url, timeout=10)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log()}"
            try:
                if self._client.get("/-/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready in 60 s:\n{self.log()}"
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query (``/api/v1/query``) at unix time ``at`` (now when None): the result vector."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = self._client.get("/api/v1/query", params=params).json()
        assert body["status"] == "success", f"{expr}: {body}"
        assert body["data"]["resultType"] in ("vector", "scalar"), body
        if body["data"]["resultType"] == "scalar":
            return [{"metric": {}, "value": body["data"]["result"]}]
        return body["data"]["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        """Range query (``/api/v1/query_range``): the result matrix."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
        body = self._client.get("/api/v1/query_range", params=params).json()
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single sample of a query (None when empty)."""
        result = self.query(expr, at)
        assert len(result) <= 1, f"{expr}: {result}"
        return float(result[0]["value"][1]) if result else None

    def label_values(self, label: str, match: str) -> list[str]:
        """``/api/v1/label/<label>/values?match[]=<match>`` (what Grafana's ``label_values`` asks)."""
        body = self._client.get(f"/api/v1/label/{label}/values", params={"match[]": match}).json()
        assert body["status"] == "success", body
        return body["data"]

    def targets(self) -> list[dict[str, Any]]:
        return self._client.get("/api/v1/targets").json()["data"]["activeTargets"]

    def stop(self) -> None:
        self._client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
