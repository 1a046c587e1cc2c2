"""Every value set of helm/ssd-detector passes the admission chain of a stock KServe + Knative + Kubernetes.

The chart is rendered (pinned helm) with its defaults and each ``ci/*-values.yaml``; the
InferenceService goes through ``k8s_admission_rules.admit``: KServe's defaulting (resource defaults from
inferenceservice-config) and validation (autoscaler class vs scale metric, replicas, mode rules), Knative's
pod-spec field masks with the default config-features plus only the flags the value set declares in
``knative.features``, and Kubernetes' resource rules. Each rule cites its upstream source in
``tests/k8s_admission_rules.py``. The rules
themselves are checked to reject what the platform rejects (the chart's earlier mistakes among them).
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import k8s_admission_rules as rules
import pytest
import yaml
from pinned_tools import pinned_helm

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "ssd-detector"
RELEASE = "ssd"
NAMESPACE = "vision"
VALUE_SETS = (
    "default",
    *sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")),
)


@pytest.fixture(scope="module")
def helm() -> str:
    return pinned_helm()


def values_args(value_set: str) -> list[str]:
    return [] if value_set == "default" else ["-f", str(CHART / "ci" / f"{value_set}-values.yaml")]


def render(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def docs_of(helm: str, *args: str) -> list[dict[str, Any]]:
    proc = render(helm, *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict[str, Any]]]:
    return {name: docs_of(helm, *values_args(name)) for name in VALUE_SETS}


def merged_values(value_set: str) -> dict[str, Any]:
    """values.yaml overlaid with the set's file (maps merged, everything else replaced), as helm does."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(base)
        for key, value in over.items():
            out[key] = (
                merge(out[key], value)
                if isinstance(value, dict) and isinstance(out.get(key), dict)
                else value
            )
        return out

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if value_set != "default":
        values = merge(values, yaml.safe_load((CHART / "ci" / f"{value_set}-values.yaml").read_text()))
    return values


def the_isvc(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    return isvc


def container_of(isvc: dict[str, Any]) -> dict[str, Any]:
    return isvc["spec"]["predictor"]["containers"][0]


def platforms_for(value_set: str) -> list[rules.Platform]:
    """The clusters a value set is meant for: a stock KServe master (0.16+ names) or, with the legacy mode
    names, also v0.14.0; Knative's default flags plus those the set lists in knative.features."""
    values = merged_values(value_set)
    features = rules.KNATIVE_DEFAULT_ENABLED | frozenset(values["knative"]["features"])
    releases = [rules.KSERVE_MASTER] + ([rules.KSERVE_V0_14] if values["kserveLegacyModeNames"] else [])
    return [rules.Platform(kserve=release, knative_features=features) for release in releases]


def arg_value(container: dict[str, Any], flag: str) -> str | None:
    for arg in container["args"]:
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
    return None


# ---------------------------------------------------------------- every value set is admitted -------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_value_set_is_admitted_by_a_stock_platform(rendered, value_set):
    isvc = the_isvc(rendered[value_set])
    for platform in platforms_for(value_set):
        problems = rules.admit(isvc, platform)
        assert not problems, f"{value_set} on KServe {platform.kserve}:\n" + "\n".join(problems)


def test_default_values_need_nothing_non_default():
    values = merged_values("default")
    assert values["knative"]["features"] == []
    assert platforms_for("default")[0].knative_features == rules.KNATIVE_DEFAULT_ENABLED


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_non_default_knative_flags_are_named_in_the_set_and_the_readme(value_set):
    flags = merged_values(value_set)["knative"]["features"]
    if value_set == "default" or not flags:
        return
    text = (CHART / "ci" / f"{value_set}-values.yaml").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    readme = (REPO / "docs" / "deployment.md").read_text()
    for flag in flags:
        assert flag in comments, f"ci/{value_set}-values.yaml needs {flag} but its comment does not say so"
        assert flag in readme, f"deployment.md does not name the Knative flag {flag} that {value_set} needs"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_resources_stay_valid_after_kserve_fills_its_defaults(rendered, value_set):
    """cpu and memory are set in requests and limits: KServe's cpuLimit 1 never lands under a request."""
    resources = container_of(the_isvc(rendered[value_set]))["resources"]
    for name in ("cpu", "memory"):
        assert name in resources["requests"] and name in resources["limits"], (value_set, name)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_server_metrics_port_is_what_prometheus_scrapes(rendered, value_set):
    """Whatever inferenceservice-config says, KServe's pod mutator must leave prometheus.io/port on the
    server's httpPort, and a PodMonitor must point at it too."""
    docs = rendered[value_set]
    isvc = the_isvc(docs)
    port = arg_value(container_of(isvc), "--http_port")
    annotations = isvc["spec"]["predictor"].get("annotations", {})
    values = merged_values(value_set)
    if values["metrics"]["prometheusAnnotations"]:
        for scraping in ("false", "true"):
            for aggregation in ("false", "true"):
                platform = rules.Platform(
                    metrics_aggregator={
                        "enableMetricAggregation": aggregation,
                        "enablePrometheusScraping": scraping,
                    }
                )
                final = rules.kserve_pod_metrics_annotations(annotations, platform)
                assert final["prometheus.io/scrape"] == "true"
                assert (final["prometheus.io/port"], final["prometheus.io/path"]) == (port, "/metrics")
    for monitor in (d for d in docs if d["kind"] == "PodMonitor"):
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["relabelings"][-1]["replacement"].endswith(f":{port}")
        pod_labels = isvc["spec"]["predictor"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        declared = container_of(isvc)["ports"][0]["containerPort"]
        assert endpoint["relabelings"][0]["regex"] == f"kserve-container;{declared}"


# ---------------------------------------------------------------- autoscaling -----------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_knative_concurrency_follows_the_batch_size(rendered, value_set):
    """Knative mode: target = batch size B unless set, hard limit = 2 * B unless set, never unlimited, and
    the server's queue admits at least the hard limit of (single-image) requests."""
    isvc = the_isvc(rendered[value_set])
    if rules.deployment_mode(isvc) != "Knative":
        return
    predictor = isvc["spec"]["predictor"]
    container = container_of(isvc)
    batch = int(arg_value(container, "--max_batch_size") or 32)
    values = merged_values(value_set)["autoscaling"]
    assert predictor["containerConcurrency"] == (values["containerConcurrency"] or 2 * batch) > 0
    if predictor["scaleMetric"] == "concurrency":
        assert (
            predictor["scaleTarget"] == (values["scaleTarget"] or batch) <= predictor["containerConcurrency"]
        )
    queue = arg_value(container, "--max_queue_images")
    assert queue is None or int(queue) >= predictor["containerConcurrency"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_scale_to_zero_only_in_knative_mode(rendered, value_set):
    isvc = the_isvc(rendered[value_set])
    if rules.deployment_mode(isvc) == "Standard":
        assert isvc["spec"]["predictor"]["minReplicas"] >= 1


def test_keda_scales_on_the_offered_load(rendered):
    isvc = the_isvc(rendered["standard-keda"])
    predictor = isvc["spec"]["predictor"]
    assert "scaleMetric" not in predictor and predictor["minReplicas"] >= 1
    (metric,) = predictor["autoScaling"]["metrics"]
    query = metric["external"]["metric"]["query"]
    pods = f'namespace="{NAMESPACE}",pod=~"{RELEASE}-ssd-detector-predictor-.*"'
    assert query == (
        f"sum(100 * sum by (pod) (rate(ssd_offered_images_total{{{pods}}}[2m]))"
        f" / sum by (pod) (ssd_capacity_images_per_second{{{pods}}}))"
    )
    assert metric["external"]["target"]["value"] == "70"  # % of a replica's capacity
    assert any(d["kind"] == "PodMonitor" for d in rendered["standard-keda"])
    gpu = the_isvc(rendered["standard-keda-gpu"])["spec"]["predictor"]["autoScaling"]["metrics"][0]
    assert gpu["external"]["metric"]["query"].startswith("sum(DCGM_FI_DEV_GPU_UTIL{exported_namespace=")
    assert gpu["external"]["target"]["value"] == "70"


def test_keda_queue_trigger_threshold(helm):
    """trigger=queue: the threshold given, or 2 x maxBatchSize once the standing-queue shedding is off
    (with it on the chart refuses a default: see test_chart_refuses_what_the_platform_would_reject...)."""
    keda = [*values_args("standard-keda"), "--set", "autoscaling.keda.trigger=queue"]

    def target(*more: str) -> str:
        (metric,) = the_isvc(docs_of(helm, *keda, *more))["spec"]["predictor"]["autoScaling"]["metrics"]
        assert metric["external"]["metric"]["query"].startswith("sum(ssd_queue_images{")
        return metric["external"]["target"]["value"]

    assert target("--set", "autoscaling.keda.threshold=6") == "6"
    assert target("--set", "predictor.shedStandingQueue=false") == "64"


def test_the_server_exports_the_metrics_keda_reads():
    source = (REPO / "predictor" / "serving" / "prometheus.py").read_text()
    assert re.search(r'Counter\(\s*"ssd_offered_images"', source)  # _total appended by the client
    assert '"ssd_capacity_images_per_second"' in source
    assert re.search(r'Gauge\(\s*"ssd_queue_images"', source)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_probes_add_little_to_a_scale_from_zero(rendered, value_set):
    """A pod is ready at most startup + readiness period after the model has loaded."""
    container = container_of(the_isvc(rendered[value_set]))
    added = container["startupProbe"]["periodSeconds"] + container["readinessProbe"]["periodSeconds"]
    assert added <= 5
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "a cold GPU start may take 10 min"


# ---------------------------------------------------------------- ports, operations objects, test pod -----


def test_grpc_is_exposed_where_the_mode_allows(rendered):
    standard = container_of(the_isvc(rendered["standard-hpa"]))["ports"]
    assert [(p["name"], p["containerPort"]) for p in standard] == [("http1", 8080), ("grpc", 8081)]
    h2c = the_isvc(rendered["knative-grpc"])
    assert [(p["name"], p["containerPort"]) for p in container_of(h2c)["ports"]] == [("h2c", 8081)]
    assert arg_value(container_of(h2c), "--grpc_port") == "8081"
    assert not [d for d in rendered["knative-grpc"] if d["kind"] == "Pod"], (
        "the REST helm test cannot pass there"
    )
    assert len(container_of(the_isvc(rendered["default"]))["ports"]) == 1


def test_pdb_in_standard_mode_only(rendered):
    for value_set, docs in rendered.items():
        pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
        standard = rules.deployment_mode(the_isvc(docs)) == "Standard"
        assert len(pdbs) == (1 if standard else 0), value_set
        for pdb in pdbs:
            labels = the_isvc(docs)["spec"]["predictor"]["labels"]
            assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
            assert pdb["spec"]["maxUnavailable"] >= 1


def test_topology_spread_selects_the_predictor_pods(rendered):
    predictor = the_isvc(rendered["standard-hpa"])["spec"]["predictor"]
    (constraint,) = predictor["topologySpreadConstraints"]
    assert constraint["labelSelector"]["matchLabels"].items() <= predictor["labels"].items()


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_test_pod_runs_a_small_pinned_python_image(rendered, value_set):
    docs = rendered[value_set]
    predictor_image = container_of(the_isvc(docs))["image"]
    for pod in (d for d in docs if d["kind"] == "Pod"):
        (container,) = pod["spec"]["containers"]
        assert container["image"] != predictor_image
        assert re.fullmatch(
            r"docker\.io/library/python:3\.\d+\.\d+-slim-\w+|.+@sha256:[0-9a-f]{64}", container["image"]
        )


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_a_tag_is_pulled_always_a_digest_if_not_present(rendered, value_set):
    container = container_of(the_isvc(rendered[value_set]))
    expected = "IfNotPresent" if "@sha256:" in container["image"] else "Always"
    assert container["imagePullPolicy"] == expected


# ---------------------------------------------------------------- what the chart refuses to render --------


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        (["deploymentMode=Standard", "autoscaling.scaleMetric=cpu", "autoscaling.scaleTarget=70",
          "autoscaling.minReplicas=0"], "needs deploymentMode=Knative"),
        (["deploymentMode=Standard", "autoscaling.autoscalerClass=keda", "autoscaling.minReplicas=0"],
         "needs deploymentMode=Knative"),
        (["deploymentMode=Standard", "autoscaling.autoscalerClass=keda"], "autoscaling.keda.serverAddress"),
        # under standing-queue shedding the queue never reaches 2 x maxBatchSize: no default threshold
        (["deploymentMode=Standard", "autoscaling.autoscalerClass=keda", "autoscaling.keda.serverAddress=http://p",
          "autoscaling.keda.trigger=queue"], "autoscaling.keda.threshold below 2 x the efficient batch size"),
        (["priorityClassName=high"], "kubernetes.podspec-priorityclassname"),
        (["gpu.nodeSelector.a=b"], "kubernetes.podspec-nodeselector"),
        (["topologySpreadConstraints[0].maxSkew=1", "topologySpreadConstraints[0].topologyKey=zone",
          "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule"],
         "kubernetes.podspec-topologyspreadconstraints"),
        (["autoscaling.containerConcurrency=0"], "containerConcurrency"),
        (["autoscaling.scaleTarget=100"], "must not exceed the hard limit"),
        (["predictor.maxQueueImages=16"], "maxQueueImages (16) must be at least"),
        (["knative.protocol=h2c"], "tests.enabled=false"),
        (["autoscaling.scaleMetric=rps"], "scaleTarget must be set"),
        (["timeoutSeconds=900"], "max-revision-timeout-seconds"),
        (["canary.enabled=true", "canary.predictor.scoreTreshold=0.5"],
         "canary.predictor.scoreTreshold: not a key of predictor"),
        (["canary.enabled=true", "deploymentMode=Standard", "autoscaling.scaleMetric=cpu"],
         "needs model.storageUri"),
        (["canary.enabled=true", "deploymentMode=Standard", "autoscaling.scaleMetric=cpu",
          "model.storageUri=s3://m/v1", "canary.replicas=2"], "must not exceed autoscaling.minReplicas"),
        (["canary.enabled=true", "deploymentMode=Standard", "autoscaling.scaleMetric=cpu",
          "model.storageUri=s3://m/v1", "kserveLegacyModeNames=true"], "needs KServe 0.20+"),
        (["canary.enabled=true", "deploymentMode=Standard", "autoscaling.scaleMetric=cpu",
          "model.storageUri=s3://m/v1", "fullnameOverride=" + "a" * 40, "canary.name=" + "b" * 20],
         "longer than 63 characters"),
    ],
)  # fmt: skip
def test_chart_refuses_what_the_platform_would_reject_or_run_wrongly(helm, settings, complaint):
    proc = render(helm, *[arg for s in settings for arg in ("--set", s)])
    assert proc.returncode != 0, f"{settings} was accepted"
    assert complaint in proc.stderr, proc.stderr


def test_legacy_mode_names(helm):
    isvc = the_isvc(
        docs_of(
            helm,
            "--set",
            "kserveLegacyModeNames=true",
            "--set",
            "deploymentMode=Standard",
            "--set",
            "autoscaling.scaleMetric=cpu",
            "--set",
            "autoscaling.scaleTarget=80",
        )
    )
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert not rules.admit(isvc, rules.Platform(kserve=rules.KSERVE_V0_14))
    assert not rules.admit(isvc, rules.Platform())
    modern = the_isvc(
        docs_of(
            helm,
            "--set",
            "deploymentMode=Standard",
            "--set",
            "autoscaling.scaleMetric=cpu",
            "--set",
            "autoscaling.scaleTarget=80",
        )
    )
    assert any("deploymentMode" in p for p in rules.admit(modern, rules.Platform(kserve=rules.KSERVE_V0_14)))


# ---------------------------------------------------------------- the rules reject what the platform reject


@pytest.fixture
def isvc(rendered) -> dict[str, Any]:
    return copy.deepcopy(the_isvc(rendered["default"]))


def test_rule_cpu_request_above_kserves_default_limit(isvc):
    """The chart's old default: requests.cpu 2 and no cpu limit -> KServe fills limits.cpu 1."""
    del container_of(isvc)["resources"]["limits"]["cpu"]
    defaulted = rules.kserve_default(isvc, rules.Platform())
    assert container_of(defaulted)["resources"]["limits"]["cpu"] == "1"
    assert any(
        "must be less than or equal to cpu limit of 1" in p for p in rules.admit(isvc, rules.Platform())
    )


def test_rule_gpu_request_must_equal_limit(isvc):
    container_of(isvc)["resources"]["requests"]["nvidia.com/gpu"] = "2"
    assert any("must be equal to nvidia.com/gpu limit of 1" in p for p in rules.admit(isvc, rules.Platform()))
    del container_of(isvc)["resources"]["limits"]["nvidia.com/gpu"]
    assert any("Limit must be set for non overcommitable" in p for p in rules.admit(isvc, rules.Platform()))
    container_of(isvc)["resources"]["requests"].pop("nvidia.com/gpu")
    container_of(isvc)["resources"]["limits"]["nvidia.com/gpu"] = "0.5"
    assert any("must be an integer" in p for p in rules.admit(isvc, rules.Platform()))


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("securityContext", {"runAsNonRoot": True}, "kubernetes.podspec-securitycontext"),
        ("priorityClassName", "high", "kubernetes.podspec-priorityclassname"),
        ("nodeSelector", {"a": "b"}, "kubernetes.podspec-nodeselector"),
        ("terminationGracePeriodSeconds", 60, None),
    ],
)
def test_rule_knative_field_mask(isvc, field, value, flag):
    isvc["spec"]["predictor"][field] = value
    problems = rules.admit(isvc, rules.Platform())
    assert any(f"must not set the field(s): {field}" in p for p in problems), problems
    if flag:
        enabled = rules.Platform(knative_features=rules.KNATIVE_DEFAULT_ENABLED | {flag})
        assert not rules.admit(isvc, enabled)
        isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Standard"
        isvc["spec"]["predictor"]["scaleMetric"] = "cpu"
        isvc["spec"]["predictor"]["scaleTarget"] = 80
        del isvc["spec"]["predictor"]["containerConcurrency"]
        assert not rules.admit(isvc, rules.Platform()), "Standard mode has no Knative webhook"


def test_rule_knative_one_port_with_a_known_name(isvc):
    container = container_of(isvc)
    container["ports"].append({"name": "grpc", "containerPort": 8081})
    assert any("more than one container port" in p for p in rules.admit(isvc, rules.Platform()))
    container["ports"] = [{"name": "grpc", "containerPort": 8081}]
    assert any("Port name grpc is not allowed" in p for p in rules.admit(isvc, rules.Platform()))
    container["ports"] = [{"name": "h2c", "containerPort": 9091}]
    assert any("9091 is a reserved port" in p for p in rules.admit(isvc, rules.Platform()))


def test_rule_keda_rejects_scale_metric_and_hpa_rejects_external_metrics(rendered):
    keda = copy.deepcopy(the_isvc(rendered["standard-keda"]))
    keda["spec"]["predictor"]["scaleMetric"] = "cpu"
    assert "kserve keda: ScaleMetric is not supported for KEDA" in rules.admit(keda, rules.Platform())
    keda["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] = "hpa"
    del keda["spec"]["predictor"]["scaleMetric"]
    assert any(
        "invalid HPA metric source type with value [External]" in p
        for p in rules.admit(keda, rules.Platform())
    )
    assert any(
        "autoscaler class" in p
        for p in rules.admit(the_isvc(rendered["standard-keda"]), rules.Platform(kserve=rules.KSERVE_V0_14))
    )


def test_rule_replicas_and_concurrency(isvc):
    isvc["spec"]["predictor"]["minReplicas"] = 5
    isvc["spec"]["predictor"]["maxReplicas"] = 2
    isvc["spec"]["predictor"]["containerConcurrency"] = -1
    problems = rules.admit(isvc, rules.Platform())
    assert "kserve replicas: minReplicas must be less than or equal to maxReplicas" in problems
    assert "kserve containerConcurrency: must be >= 0" in problems


def test_rule_kserve_scraping_overrides_the_port():
    """The chart's old annotation: enable-prometheus-scraping "true" points Prometheus at 9091/9088."""
    annotations = {"serving.kserve.io/enable-prometheus-scraping": "true", "prometheus.io/port": "8080"}
    assert rules.kserve_pod_metrics_annotations(annotations, rules.Platform())["prometheus.io/port"] == "9091"
    annotations["serving.kserve.io/enable-metric-aggregation"] = "true"
    assert rules.kserve_pod_metrics_annotations(annotations, rules.Platform())["prometheus.io/port"] == "9088"


def test_rule_knative_revision_limits(isvc):
    predictor = isvc["spec"]["predictor"]
    predictor["timeout"] = 900
    predictor["containerConcurrency"] = 2000
    predictor["annotations"]["serving.knative.dev/progress-deadline"] = "1.5s"
    problems = rules.admit(isvc, rules.Platform())
    assert "knative timeoutSeconds: 900 is outside [0, 600]" in problems
    assert "knative containerConcurrency: 2000 is outside [0, 1000]" in problems
    assert "knative progress-deadline=1.5s is not at second precision" in problems
    assert rules.go_duration_seconds("1m30s") == 90


def test_rule_blocked_env(isvc):
    container_of(isvc)["env"].append({"name": "PYTHONPATH", "value": "/x"})
    assert any("PYTHONPATH" in p for p in rules.admit(isvc, rules.Platform()))


def test_parse_quantity():
    assert rules.parse_quantity("500m") * 2 == 1
    assert rules.parse_quantity("2Gi") == 2 * 1024**3
    assert rules.parse_quantity(4) == rules.parse_quantity("4")
    with pytest.raises(ValueError):
        rules.parse_quantity("four")


def test_readme_table_lists_every_value_set():
    readme = (REPO / "docs" / "deployment.md").read_text()
    section = readme[readme.index("# Deploy on Kubernetes") :]
    for value_set in VALUE_SETS[1:]:
        assert f"| `{value_set}-values.yaml` |" in section, f"deployment.md lacks {value_set}"


# ---------------------------------------------------------------- network policy --------------------------

GATEWAY = rules.Peer.pod("istio-system", app="istio-ingressgateway")
ACTIVATOR = rules.Peer.pod("knative-serving", app="activator")
AUTOSCALER = rules.Peer.pod("knative-serving", app="autoscaler")
PROMETHEUS = rules.Peer.pod("monitoring", **{"app.kubernetes.io/name": "prometheus"})
NEIGHBOUR = rules.Peer.pod(NAMESPACE, app="something-else")
OUTSIDER = rules.Peer.pod("default", app="curl")
DNS = rules.Peer.pod("kube-system", **{"k8s-app": "kube-dns"})
INTERNET = rules.Peer(None, ip="52.95.128.1")


def policies_of(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


def transformer_of(isvc: dict[str, Any]) -> rules.Peer:
    """A transformer pod of the same InferenceService (KServe labels it like the predictor, component
    transformer: components/transformer.go)."""
    return rules.Peer.pod(
        NAMESPACE,
        **{"serving.kserve.io/inferenceservice": isvc["metadata"]["name"], "component": "transformer"},
    )


def serving_ports(isvc: dict[str, Any]) -> set[int]:
    """Where callers' connections land: Knative mode, the queue-proxy's ports; Standard mode, the
    container's declared ports, plus KServe's agent port when batcher or logger put it in front."""
    predictor = isvc["spec"]["predictor"]
    if rules.deployment_mode(isvc) == "Knative":
        return {rules.KNATIVE_QUEUE_HTTP1_PORT, rules.KNATIVE_QUEUE_H2C_PORT}
    ports = {p["containerPort"] for p in container_of(isvc)["ports"]}
    if "batcher" in predictor or "logger" in predictor:
        ports.add(rules.KSERVE_AGENT_PORT)
    return ports


def scraped_ports(docs: list[dict[str, Any]], isvc: dict[str, Any]) -> set[int]:
    """The ports Prometheus scrapes: prometheus.io/port as KServe's pod mutator leaves it (stock config),
    the PodMonitor's target, and in Knative mode the queue-proxy's user metrics."""
    ports = set()
    annotations = rules.kserve_pod_metrics_annotations(
        isvc["spec"]["predictor"].get("annotations", {}), rules.Platform()
    )
    if annotations.get("prometheus.io/scrape") == "true":
        ports.add(int(annotations["prometheus.io/port"]))
    for monitor in (d for d in docs if d["kind"] == "PodMonitor"):
        ports.add(
            int(monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][-1]["replacement"].split(":")[-1])
        )
    if rules.deployment_mode(isvc) == "Knative":
        ports.add(rules.KNATIVE_USER_METRICS_PORT)
    return ports


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_network_policy_rendered_by_mode(rendered, value_set):
    """On by default in Standard mode; in Knative mode only when asked for (networkPolicy.enabled true)."""
    enabled = merged_values(value_set)["networkPolicy"]["enabled"]
    standard = rules.deployment_mode(the_isvc(rendered[value_set])) == "Standard"
    expected = enabled is True or (enabled == "auto" and standard)
    assert len(policies_of(rendered[value_set])) == (1 if expected else 0)


def policy_sets(rendered) -> list[str]:
    sets = [name for name in VALUE_SETS if policies_of(rendered[name])]
    modes = {rules.deployment_mode(the_isvc(rendered[name])) for name in sets}
    assert modes == {"Standard", "Knative"}, "the value sets must render a policy in both modes"
    return sets


def test_network_policy_selects_exactly_the_predictor_pods(rendered):
    for name in policy_sets(rendered):
        isvc = the_isvc(rendered[name])
        (policy,) = policies_of(rendered[name])
        pod = rules.kserve_predictor_pod_labels(isvc)
        assert rules.label_selector_matches(policy["spec"]["podSelector"], pod), name
        assert not rules.label_selector_matches(
            policy["spec"]["podSelector"], dict(transformer_of(isvc).labels)
        )
        other_isvc = {**pod, "serving.kserve.io/inferenceservice": "another"}
        assert not rules.label_selector_matches(policy["spec"]["podSelector"], other_isvc), name


def test_network_policy_lets_callers_and_the_platform_in_and_no_one_else(rendered):
    for name in policy_sets(rendered):
        docs = rendered[name]
        isvc, values = the_isvc(docs), merged_values(name)
        pod = rules.kserve_predictor_pod_labels(isvc)
        knative = rules.deployment_mode(isvc) == "Knative"

        def allowed(peer: rules.Peer, port: int, docs=docs, pod=pod) -> bool:
            return rules.network_policy_allows(policies_of(docs), pod, NAMESPACE, "Ingress", peer, port)

        np = values["networkPolicy"]
        gateways = [rules.Peer.pod(ns, app="gateway") for ns in np["gatewayNamespaces"]]
        callers = [*gateways, transformer_of(isvc)] + ([ACTIVATOR] if knative else [])
        if values["tests"]["enabled"]:
            callers.append(
                rules.Peer.pod(
                    NAMESPACE,
                    **{"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "test"},
                )
            )
        for extra in np["extraIngressFrom"]:
            callers.append(rules.Peer.pod(NAMESPACE, **extra["podSelector"]["matchLabels"]))
        serving, scraped = serving_ports(isvc), scraped_ports(docs, isvc)
        for port in serving:
            for caller in callers:
                assert allowed(caller, port), (name, caller, port)
            for stranger in (NEIGHBOUR, OUTSIDER, AUTOSCALER, *([] if port in scraped else [PROMETHEUS])):
                assert not allowed(stranger, port), (name, stranger, port)
        for port in scraped:  # the metrics scrape (annotation, PodMonitor, queue-proxy) still works
            assert allowed(PROMETHEUS, port) is bool(np["monitoringNamespace"]), (name, port)
            if port not in serving:
                assert not any(allowed(p, port) for p in (*callers, NEIGHBOUR, OUTSIDER)), (name, port)
        if knative:  # the queue-proxy's other ports: the autoscaler's statistics, the admin port for no one
            assert allowed(AUTOSCALER, rules.KNATIVE_AUTOSCALER_METRICS_PORT), name
            assert not allowed(PROMETHEUS, rules.KNATIVE_AUTOSCALER_METRICS_PORT), name
            everyone = (*callers, AUTOSCALER, PROMETHEUS, NEIGHBOUR)
            assert not any(allowed(p, rules.KNATIVE_QUEUE_ADMIN_PORT) for p in everyone), name
            user_port = container_of(isvc)["ports"][0]["containerPort"]
            if user_port not in scraped:  # reached through the queue-proxy only
                assert not any(allowed(p, user_port) for p in callers), name


def test_network_policy_serving_ports_are_the_containers_ports(rendered):
    """The ports the policy opens to callers are exactly where connections land: no stale port after a
    change of httpPort/grpcPort/exposeGrpc, none missing."""
    for name in policy_sets(rendered):
        isvc = the_isvc(rendered[name])
        (policy,) = policies_of(rendered[name])
        callers_rule = policy["spec"]["ingress"][0]
        assert {p["port"] for p in callers_rule["ports"]} == serving_ports(isvc), name


def test_network_policy_egress_is_what_the_pod_needs(rendered):
    for name in policy_sets(rendered):
        docs = rendered[name]
        isvc, values = the_isvc(docs), merged_values(name)
        pod = rules.kserve_predictor_pod_labels(isvc)

        def allowed(peer: rules.Peer, port: int, protocol: str = "TCP", docs=docs, pod=pod) -> bool:
            return rules.network_policy_allows(
                policies_of(docs), pod, NAMESPACE, "Egress", peer, port, protocol
            )

        assert allowed(DNS, 53, "UDP") and allowed(DNS, 53, "TCP"), name
        assert not allowed(NEIGHBOUR, 53, "UDP"), name
        uri = values["model"]["storageUri"]
        needs_storage = bool(uri) and not uri.startswith("pvc://")
        assert allowed(INTERNET, 443) is needs_storage, name
        if values["predictor"]["tracing"]:
            collector = rules.Peer.pod("observability", app="otel-collector")
            assert allowed(collector, values["networkPolicy"]["tracing"]["port"]), name
        if values["logger"]["enabled"]:
            sink = rules.Peer.pod("default", app="message-dumper")
            assert all(allowed(sink, port) for port in values["networkPolicy"]["logger"]["ports"]), name
        elsewhere = rules.Peer.pod("elsewhere", app="db")
        for peer, port in ((INTERNET, 5432), (NEIGHBOUR, 8080), (elsewhere, 80), (INTERNET, 4318)):
            assert not allowed(peer, port), (name, peer, port)


def test_rule_network_policy_semantics():
    """The evaluator follows Kubernetes: an unselected pod is open; a podSelector peer is namespace-local;
    namespaceSelector + podSelector in one peer AND, separate peers OR; ports default to all, TCP."""
    policy = {
        "metadata": {"name": "p"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "x"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": 80}]},
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {rules.NAMESPACE_NAME_LABEL: "mon"}},
                            "podSelector": {"matchLabels": {"app": "prom"}},
                        }
                    ]
                },
            ],
        },
    }

    def allowed(pod: dict[str, str], peer: rules.Peer, port: int, protocol: str = "TCP") -> bool:
        return rules.network_policy_allows([policy], pod, "ns", "Ingress", peer, port, protocol)

    x = {"app": "x"}
    assert allowed({"app": "y"}, OUTSIDER, 1)  # not selected: not isolated
    assert allowed(x, rules.Peer.pod("ns", role="client"), 80)
    assert not allowed(x, rules.Peer.pod("ns", role="client"), 80, "UDP")
    assert not allowed(x, rules.Peer.pod("other", role="client"), 80)  # podSelector alone: same namespace
    assert not allowed(x, rules.Peer.pod("ns", role="client"), 81)
    assert allowed(x, rules.Peer.pod("mon", app="prom"), 12345)  # no ports: every port
    assert not allowed(x, rules.Peer.pod("mon", app="grafana"), 80)  # both selectors must match
    assert not allowed(x, rules.Peer.pod("ns", app="prom"), 80)
    assert rules.network_policy_allows([policy], x, "ns", "Egress", INTERNET, 443)  # no Egress type


def test_rule_knative_secret_mounts_read_only(rendered):
    """The token Secret (auth.tokenSecret) is mounted read-only, as Knative demands of non-emptyDir mounts."""
    isvc = copy.deepcopy(the_isvc(rendered["default"]))
    predictor = isvc["spec"]["predictor"]
    predictor["volumes"].append({"name": "auth-token", "secret": {"secretName": "s"}})
    mount = {"name": "auth-token", "mountPath": "/var/run/secrets/x"}
    container_of(isvc)["volumeMounts"].append(mount)
    assert any("should be readOnly" in p for p in rules.admit(isvc, rules.Platform()))
    mount["readOnly"] = True
    assert not rules.admit(isvc, rules.Platform())


def test_token_secret_is_admitted_in_both_modes(helm):
    for mode_args in ([], ["-f", str(CHART / "ci" / "standard-hpa-values.yaml")]):
        docs = docs_of(helm, *mode_args, "--set", "auth.tokenSecret=ssd-tokens")
        isvc = the_isvc(docs)
        assert not rules.admit(isvc, rules.Platform()), mode_args
        assert (
            arg_value(container_of(isvc), "--auth_token_file") == "/var/run/secrets/ssd-detector/auth/token"
        )
        (test_pod,) = [d for d in docs if d["kind"] == "Pod"]
        assert (
            "--token-file=/var/run/secrets/ssd-detector/auth/token"
            in test_pod["spec"]["containers"][0]["command"]
        )


# ---------------------------------------------------------------- canary (KServe 0.20+ spec.canary) ------


@pytest.fixture()
def canary_isvc(rendered) -> dict[str, Any]:
    return copy.deepcopy(the_isvc(rendered["standard-canary"]))


def _canary_problems(isvc: dict[str, Any], platform: rules.Platform | None = None) -> list[str]:
    return rules.kserve_validate_canary(
        rules.kserve_default(isvc, platform or rules.Platform()), platform or rules.Platform()
    )


def test_canary_sets_render_what_each_mode_needs(rendered):
    knative = the_isvc(rendered["knative-canary"])
    assert "canary" not in knative["spec"]
    assert knative["spec"]["predictor"]["canaryTrafficPercent"] == 10
    container = container_of(knative)
    assert container["image"] == "ssd-predictor:0.1.1-cpu"  # the canary's, in the predictor: the new revision
    assert {"name": "STORAGE_URI", "value": "s3://models/ssd/v2"} in container["env"]
    assert "--score_threshold=0.45" in container["args"]
    standard = the_isvc(rendered["standard-canary"])
    assert "canaryTrafficPercent" not in standard["spec"]["predictor"]
    stable = container_of(standard)
    assert stable["image"] == "ssd-predictor:0.1.0-cpu"
    assert {"name": "STORAGE_URI", "value": "s3://models/ssd/v1"} in stable["env"]
    assert not any(a.startswith("--score_threshold") for a in stable["args"])
    (canary,) = standard["spec"]["canary"]
    assert (canary["trafficPercent"], canary["predictor"]["name"], canary["predictor"]["minReplicas"]) == (
        10,
        "v2",
        1,
    )
    (canary_container,) = canary["predictor"]["containers"]
    assert canary_container["image"] == "ssd-predictor:0.1.1-cpu"
    assert {"name": "STORAGE_URI", "value": "s3://models/ssd/v2"} in canary_container["env"]
    assert {"--score_threshold=0.45", "--max_batch_size=16"} <= set(canary_container["args"])
    # Everything else of the canary's container is the stable one's.
    same = {k: v for k, v in canary_container.items() if k not in ("image", "env", "args")}
    assert same == {k: v for k, v in stable.items() if k not in ("image", "env", "args")}


def test_canary_pod_is_the_stable_pod_with_the_canary_container(canary_isvc):
    """buildCanaryPredictor: the stable predictor's pod fields stay, the canary's containers replace the
    stable ones, no autoscaling fields, the canary's fixed replicas."""
    defaulted = rules.kserve_default(canary_isvc, rules.Platform())
    (canary,) = rules.kserve_canary_predictors(defaulted).values()
    stable = rules.predictor_of(defaulted)
    assert canary["containers"] == canary_isvc["spec"]["canary"][0]["predictor"]["containers"]
    assert (
        canary["volumes"] == stable["volumes"]
        and canary["serviceAccountName"] == stable["serviceAccountName"]
    )
    assert canary["minReplicas"] == 1 and canary["name"] == "v2"
    assert not {"maxReplicas", "scaleMetric", "scaleTarget", "autoScaling"} & set(canary)
    del canary_isvc["spec"]["canary"][0]["predictor"]["minReplicas"]
    canary_isvc["spec"]["predictor"]["minReplicas"] = 3
    canary_isvc["spec"]["canary"][0]["trafficPercent"] = 10
    (derived,) = rules.kserve_canary_predictors(canary_isvc).values()
    assert derived["minReplicas"] == 1  # ceil(3 * 10 / 100)
    canary_isvc["spec"]["canary"][0]["trafficPercent"] = 50
    assert rules.kserve_canary_predictors(canary_isvc)["v2"]["minReplicas"] == 2  # ceil(1.5)


def test_rule_canary_names_traffic_and_fields(canary_isvc):
    assert not _canary_problems(canary_isvc)
    second = copy.deepcopy(canary_isvc["spec"]["canary"][0])
    canary_isvc["spec"]["canary"].append(second)
    assert "kserve canary: predictor.name 'v2' is duplicated" in _canary_problems(canary_isvc)
    second["predictor"]["name"] = "v3"
    assert not _canary_problems(canary_isvc)
    second["trafficPercent"] = 91
    assert "kserve canary: sum of canary trafficPercent values (101) must be <= 100" in _canary_problems(
        canary_isvc
    )
    second["trafficPercent"] = 90
    assert not _canary_problems(canary_isvc)  # 10 + 90: nothing left for the stable predictor, allowed
    canary_isvc["spec"]["canary"].pop()
    canary_isvc["spec"]["predictor"]["name"] = "v2"
    assert "kserve canary: predictor.name 'v2' conflicts with stable predictor name" in _canary_problems(
        canary_isvc
    )
    del canary_isvc["spec"]["predictor"]["name"]
    del canary_isvc["spec"]["canary"][0]["predictor"]["name"]
    assert "kserve canary[0]: predictor.name is required" in _canary_problems(canary_isvc)


@pytest.mark.parametrize(
    ("field", "value"),
    [("maxReplicas", 3), ("scaleTarget", 50), ("scaleMetric", "cpu"), ("autoScaling", {"metrics": []}),
     ("workerSpec", {"pipelineParallelSize": 2})],
)  # fmt: skip
def test_rule_canary_fields_not_allowed(canary_isvc, field, value):
    canary_isvc["spec"]["canary"][0]["predictor"][field] = value
    assert f"kserve canary 'v2': must not set {field}" in _canary_problems(canary_isvc)


def test_rule_canary_replicas_mode_and_model(canary_isvc):
    canary_isvc["spec"]["canary"][0]["predictor"]["minReplicas"] = 3  # stable minReplicas is 2
    assert any(
        "minReplicas (3) must not exceed stable predictor minReplicas (2)" in p
        for p in _canary_problems(canary_isvc)
    )
    canary_isvc["spec"]["canary"][0]["predictor"]["minReplicas"] = 2
    assert not _canary_problems(canary_isvc)
    canary_isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Knative"
    assert "kserve canary: canary is only supported in Standard deployment mode" in _canary_problems(
        canary_isvc
    )
    canary_isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    assert not _canary_problems(canary_isvc)  # the legacy name, folded by KServe's defaulter
    env = container_of(canary_isvc)["env"]
    env[:] = [e for e in env if e["name"] != "STORAGE_URI"]
    assert "kserve canary: canary requires a stable predictor with a model" in _canary_problems(canary_isvc)
    v014 = rules.Platform(kserve=rules.KSERVE_V0_14)
    assert "spec.canary is not in its CRD" in _canary_problems(canary_isvc, v014)[0]


def test_canary_pod_resources_are_checked_too(canary_isvc):
    canary_container = canary_isvc["spec"]["canary"][0]["predictor"]["containers"][0]
    canary_container["resources"] = {"requests": {"cpu": "4"}, "limits": {"cpu": "2"}}
    problems = rules.admit(canary_isvc, rules.Platform())
    assert any(
        p.startswith("canary 'v2': kubernetes") and "must be less than or equal to cpu limit" in p
        for p in problems
    )
