"""Offline checks of the Helm chart ``helm/ssd-detector`` and of ``manifests/`` rendered from it.

The chart is rendered with ``helm template`` (the pinned helm from ``scripts/install_tools.py``) with
its defaults and every ``ci/*-values.yaml`` value set, then:

* every InferenceService validates against the KServe CRD's openAPIV3Schema (unknown fields rejected,
  as ``kubectl apply`` with strict field validation does); the CRD is read from
  ``$KSERVE_ISVC_CRD`` or ``../shared/kserve/serving.kserve.io_inferenceservices.yaml``;
* every core object, and the predictor's pod spec, validates against the Kubernetes schemas
  (kubernetes-validate, strict);
* policies hold: GPU limit by default, non-root with a read-only root filesystem, probes on the served
  model, container args accepted by the predictor's own argument parser.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pinned_tools import pinned_helm

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "ssd-detector"
MANIFESTS = REPO / "manifests"
CRD_ENV = "KSERVE_ISVC_CRD"
CRD_DEFAULT = REPO.parent / "shared" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
RELEASE = "ssd"
NAMESPACE = "vision"
# Kubernetes versions the core objects are validated against: the chart's minimum and kubectl's.
KUBE_VERSIONS = ("1.27.0", "1.35.0")
# The value sets the chart must support (ci/<name>-values.yaml); "default" is values.yaml alone.
REQUIRED_SETS = (
    "cpu",
    "standard-hpa",
    "standard-keda",
    "standard-keda-gpu",
    "scale-to-zero",
    "storage-batcher",
    "knative-grpc",
)
# Kinds defined by CRDs (absent from the Kubernetes schemas); PodMonitor is the Prometheus Operator's.
CRD_KINDS = {"InferenceService", "PodMonitor"}
VALUE_SETS = (
    "default",
    *sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")),
)
YAMLLINT_CONFIG = json.dumps(
    {
        "extends": "default",
        "rules": {
            "line-length": {"max": 130},
            "document-start": "disable",
            "indentation": {"spaces": 2, "indent-sequences": "whatever"},
            "truthy": {"check-keys": False},
        },
    }
)

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_module(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def helm() -> str:
    return pinned_helm()


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, check=False, timeout=60)


def values_args(value_set: str) -> list[str]:
    return [] if value_set == "default" else ["-f", str(CHART / "ci" / f"{value_set}-values.yaml")]


def template(helm: str, *args: str) -> list[dict[str, Any]]:
    """``helm template`` of the chart; the rendered documents (test hooks included)."""
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.load_all(proc.stdout, Loader=_Loader) if doc]


@pytest.fixture(scope="session")
def rendered(helm: str) -> dict[str, list[dict[str, Any]]]:
    """Every value set rendered once: name -> documents."""
    return {name: template(helm, *values_args(name)) for name in VALUE_SETS}


def the_isvc(docs: list[dict[str, Any]]) -> dict[str, Any]:
    isvcs = [d for d in docs if d["kind"] == "InferenceService"]
    assert len(isvcs) == 1, [d["kind"] for d in docs]
    return isvcs[0]


def predictor_container(isvc: dict[str, Any]) -> dict[str, Any]:
    containers = isvc["spec"]["predictor"]["containers"]
    assert [c["name"] for c in containers] == ["kserve-container"]
    return containers[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# ---------------------------------------------------------------- CRD schema -------------------------


def _strict(schema: dict[str, Any]) -> None:
    """Make every object schema that lists its properties reject unknown ones (in place)."""
    if not isinstance(schema, dict):
        return
    props = schema.get("properties")
    if isinstance(props, dict):
        for sub in props.values():
            _strict(sub)
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        _strict(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        _strict(schema["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        for sub in schema.get(key, []):
            _strict(sub)


@cache
def _crd_path() -> Path | None:
    path = Path(os.environ.get(CRD_ENV) or CRD_DEFAULT)
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def isvc_validator() -> jsonschema.protocols.Validator:
    path = _crd_path()
    if path is None:
        pytest.skip(
            f"KServe InferenceService CRD not found at {os.environ.get(CRD_ENV) or CRD_DEFAULT} "
            f"(set {CRD_ENV}); only the CRD schema check is skipped"
        )
    crd = yaml.load(path.read_text(), Loader=_Loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    _strict(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_inferenceservice_validates_against_kserve_crd(rendered, isvc_validator, value_set):
    isvc = the_isvc(rendered[value_set])
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    errors = sorted(isvc_validator.iter_errors(isvc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_crd_check_catches_unknown_and_mistyped_fields(rendered, isvc_validator):
    isvc = copy.deepcopy(the_isvc(rendered["default"]))
    isvc["spec"]["predictor"]["maxReplica"] = 3
    isvc["spec"]["predictor"]["scaleMetric"] = "qps"
    predictor_container(isvc)["resources"]["limits"]["nvidia.com/gpu"] = "one"
    messages = [e.message for e in isvc_validator.iter_errors(isvc)]
    assert any("maxReplica" in m for m in messages), messages
    assert any("qps" in m for m in messages), messages
    assert any("one" in m for m in messages), messages


# ---------------------------------------------------------------- Kubernetes schemas -----------------


def _kube_validate(doc: dict[str, Any], version: str) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {e.message}")


def _predictor_as_pod(isvc: dict[str, Any]) -> dict[str, Any]:
    """The pod-spec part of the predictor as a core v1 Pod (KServe builds the real pod from it)."""
    kserve_only = {
        "minReplicas",
        "maxReplicas",
        "scaleMetric",
        "scaleTarget",
        "containerConcurrency",
        "autoScaling",
        "timeout",
        "batcher",
        "logger",
        "annotations",
        "labels",
        "canaryTrafficPercent",
        "deploymentStrategy",
    }
    predictor = isvc["spec"]["predictor"]
    spec = {k: v for k, v in predictor.items() if k not in kserve_only}
    metadata = {"name": isvc["metadata"]["name"], "labels": predictor.get("labels", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_core_objects_validate_against_kubernetes_schemas(rendered, value_set):
    docs = rendered[value_set]
    core = [d for d in docs if d["kind"] not in CRD_KINDS]
    assert {d["kind"] for d in core} <= {
        "ServiceAccount",
        "ConfigMap",
        "Pod",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    for version in KUBE_VERSIONS:
        for doc in [*core, _predictor_as_pod(the_isvc(docs))]:
            _kube_validate(doc, version)


# ---------------------------------------------------------------- policies -----------------------------


@pytest.fixture(scope="session")
def server_parser():
    from predictor.serving.options import build_parser

    return build_parser


def _ssd_env_names(build_parser) -> set[str]:
    import re

    return {m for a in build_parser()._actions for m in re.findall(r"\bEnv (SSD_[A-Z_]+)", a.help or "")}


def _server_args(build_parser, container: dict[str, Any], monkeypatch) -> Any:
    """The container's args parsed by the server's parser, with the container's SSD_* env applied
    (and no SSD_* variable of the test process leaking in); defaults fill in absent flags."""
    env = env_of(container)
    known = _ssd_env_names(build_parser)
    assert known, "no 'Env SSD_*' names found in the server's help texts"
    unknown = sorted(n for n in env if n.startswith("SSD_") and n not in known)
    assert not unknown, f"the chart sets SSD_* variables the server does not read: {unknown}"
    for name in known:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name.startswith("SSD_") and value is not None:
            monkeypatch.setenv(name, value)
    try:
        parser = build_parser()  # SSD_* defaults are parsed (and checked) here
        return parser.parse_args(container["args"])
    except SystemExit as e:
        pytest.fail(f"the server rejects the chart's args {container['args']} / env {env}: exit {e.code}")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_container_args_and_env_parse_with_the_server_parser(rendered, server_parser, value_set, monkeypatch):
    container = predictor_container(the_isvc(rendered[value_set]))
    env = env_of(container)
    args = _server_args(server_parser, container, monkeypatch)
    assert "command" not in container, "the image's ENTRYPOINT (python -m predictor) must be kept"
    port = args.http_port
    if container["ports"][0]["name"] == "h2c":  # Knative gRPC set: the one routed port is the gRPC port
        assert container["ports"][0]["containerPort"] == args.grpc_port
    else:
        assert container["ports"][0]["containerPort"] == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == port
    assert container["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{args.model_name}/ready"
    assert container["startupProbe"]["httpGet"]["path"] == f"/v2/models/{args.model_name}/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    if "STORAGE_URI" in env:
        assert args.model_dir == "/mnt/models"
    else:
        assert args.model_dir is None, "without storageUri the image's demo model is served"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_ssd_env_is_not_shadowed_by_a_chart_flag(rendered, server_parser, value_set):
    """The command line wins over SSD_* variables, so an SSD_* variable in predictor.extraEnv whose flag
    the chart also passes would be silently ignored."""
    import re

    flags = {
        name: action.option_strings
        for action in server_parser()._actions
        for name in re.findall(r"\bEnv (SSD_[A-Z_]+)", action.help or "")
    }
    container = predictor_container(the_isvc(rendered[value_set]))
    shadowed = sorted(
        name
        for name in env_of(container)
        if name in flags
        and any(arg == opt or arg.startswith(f"{opt}=") for arg in container["args"] for opt in flags[name])
    )
    assert not shadowed, f"SSD_* variables overridden by the chart's own flags: {shadowed}"


# Flags whose value the chart always decides itself (its own values, not the server's defaults).
CHART_DECIDED_OPTIONS = {"model_name", "model_dir"}


def test_default_values_render_the_server_defaults(rendered, server_parser, monkeypatch):
    """With values.yaml alone, every flag the chart passes parses to the ServingOptions default: the
    chart's defaults are the server's, not a second set that drifts (predictor.serving.options)."""
    import dataclasses

    from predictor.serving.options import ServingOptions

    args = _server_args(server_parser, predictor_container(the_isvc(rendered["default"])), monkeypatch)
    differing = {
        f.name: (getattr(args, f.name), f.default)
        for f in dataclasses.fields(ServingOptions)
        if f.name not in CHART_DECIDED_OPTIONS and getattr(args, f.name) != f.default
    }
    assert not differing, (
        f"the chart's defaults (parsed, server default) differ from the server's: {differing}"
    )
    assert args.model_name == ServingOptions.model_name, "values.yaml model.name vs --model_name default"


def test_values_comments_state_the_server_defaults():
    """values.yaml comments of null values name the server's default ``(--flag; server: N)``."""
    import re

    from predictor.serving.options import ServingOptions

    stated = re.findall(r"\(--(\w+); server: (\d+)\)", (CHART / "values.yaml").read_text())
    assert stated, "no '(--flag; server: N)' comments found in values.yaml"
    for flag, value in stated:
        assert int(value) == getattr(ServingOptions, flag), f"values.yaml says --{flag} defaults to {value}"


def test_batch_size_fallback_of_the_chart_is_the_server_default(helm):
    """With predictor.maxBatchSize null the chart sizes Knative's containerConcurrency from the server's
    default batch size (_autoscaling.tpl ssd-detector.batchSize): it must be ServingOptions'."""
    from predictor.serving.options import ServingOptions

    docs = template(helm, "--set", "predictor.maxBatchSize=null")
    predictor = the_isvc(docs)["spec"]["predictor"]
    assert "--max_batch_size" not in " ".join(predictor_container(the_isvc(docs))["args"])
    assert predictor["containerConcurrency"] == 2 * ServingOptions.max_batch_size


def _flag_table() -> list[tuple[str, str]]:
    """(chart value, flag) rows of ``ssd-detector.flagTable`` in _flags.tpl (generated)."""
    text = (CHART / "templates" / "_flags.tpl").read_text()
    table = text.split('define "ssd-detector.flagTable" -}}', 1)[1].split("{{- end }}", 1)[0]
    rows = yaml.safe_load(table)
    assert all(row["value"].startswith("predictor.") for row in rows), rows
    return [(row["value"].removeprefix("predictor."), row["flag"].removeprefix("--")) for row in rows]


def chart_value_name(flag: str) -> str:
    """The chart's name for a flag: camelCase, with the unit spelled as Kubernetes does (``_s`` ->
    ``Seconds``, as in ``terminationGracePeriodSeconds``; ``_ms`` -> ``Ms``; ``_bytes`` -> ``Bytes``)."""
    words = flag.split("_")
    words = ["Seconds" if w == "s" and i == len(words) - 1 else w for i, w in enumerate(words)]
    return words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])


# KServe's flag keeps KServe's name; the chart names what it holds.
CHART_NAME_EXCEPTIONS = {"grpc_max_receive_message_length": "grpcMaxMessageBytes"}


def test_chart_value_names_follow_the_flag_names():
    """Each chart value says what its flag says, unit included (requestTimeoutSeconds <->
    --request_timeout_s), and each flag of the table is a ServingOptions field."""
    import dataclasses

    from predictor.serving.options import ServingOptions

    rows = _flag_table()
    assert len(rows) > 10, rows
    fields = {f.name for f in dataclasses.fields(ServingOptions)}
    for value, flag in rows:
        assert flag in fields, f"--{flag} (chart value {value}) is not a ServingOptions field"
        assert value == CHART_NAME_EXCEPTIONS.get(flag, chart_value_name(flag)), (value, flag)


def _non_default(f: Any) -> Any:
    """A value of ``f``'s flag that is legal and not its default (within the schema's range)."""
    from predictor.serving.options import VALUE_TYPES

    kind, keywords = VALUE_TYPES[f.metadata["parse"]]
    if kind == "bool":
        return not f.default
    if kind == "string":
        return next(v for v in reversed(keywords["enum"]) if v != f.default)
    value = (keywords["minimum"] + 1) if kind == "int" else keywords.get("maximum", 3) * 0.75
    assert value != f.default and value <= keywords.get("maximum", value), f.name
    return value


def test_every_chart_flag_value_reaches_the_server(helm, server_parser, monkeypatch):
    """Each value of the generated flag table, set to a non-default value, parses back to that value on
    the server's command line (kinds: int, float, string, bool); set to null, its flag is left out."""
    import dataclasses

    from predictor.serving.options import ServingOptions

    fields = [f for f in dataclasses.fields(ServingOptions) if f.metadata["chart"] is not None]
    wanted = {f.name: _non_default(f) for f in fields}
    # a small batch (2) and queue (2) stay consistent with a Knative hard limit of 1; --runtime onnxruntime
    # is for CPU nodes (the chart refuses it with a GPU)
    args = ["--set", "autoscaling.containerConcurrency=1", "--set", "autoscaling.scaleTarget=1"]
    args += ["--set", "gpu.enabled=false"]
    for f in fields:
        args += ["--set-json", f"{f.metadata['chart'].path}={json.dumps(wanted[f.name])}"]
    container = predictor_container(the_isvc(template(helm, *args)))
    parsed = _server_args(server_parser, container, monkeypatch)
    assert {name: getattr(parsed, name) for name in wanted} == wanted

    nulls = []
    for f in fields:
        if not f.metadata["chart"].required:
            nulls += ["--set-json", f"{f.metadata['chart'].path}=null"]
    container = predictor_container(the_isvc(template(helm, *nulls)))
    flags = {arg.split("=")[0].removeprefix("--no-").removeprefix("--") for arg in container["args"]}
    assert flags & set(wanted) == {"shutdown_grace_s"}, container["args"]


# Knative's config-defaults revision-timeout-seconds: the pod's grace period without a predictor timeout.
KNATIVE_DEFAULT_REVISION_TIMEOUT = 300
# Kubernetes' default terminationGracePeriodSeconds.
KUBERNETES_DEFAULT_GRACE = 30


def pod_termination_grace(isvc: dict[str, Any]) -> int:
    """Seconds the kubelet gives the predictor pod after SIGTERM. Standard mode: the pod spec's field.
    Knative mode: Knative forbids the field and uses the revision timeout (spec.predictor.timeout)."""
    predictor = isvc["spec"]["predictor"]
    if isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard":
        return predictor.get("terminationGracePeriodSeconds", KUBERNETES_DEFAULT_GRACE)
    assert "terminationGracePeriodSeconds" not in predictor, (
        "Knative's webhook rejects spec.template.spec.terminationGracePeriodSeconds"
    )
    return predictor.get("timeout") or KNATIVE_DEFAULT_REVISION_TIMEOUT


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pod_termination_grace_exceeds_server_shutdown_grace(rendered, server_parser, value_set, monkeypatch):
    """The server drains in-flight requests for up to --shutdown_grace_s after SIGTERM; the kubelet must
    not SIGKILL it before that."""
    isvc = the_isvc(rendered[value_set])
    args = _server_args(server_parser, predictor_container(isvc), monkeypatch)
    grace = pod_termination_grace(isvc)
    assert grace > args.shutdown_grace_s, (
        f"pod termination grace {grace}s must exceed the server's --shutdown_grace_s={args.shutdown_grace_s}"
    )
    if isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard":
        assert "terminationGracePeriodSeconds" in isvc["spec"]["predictor"], "Standard mode must set it"


def test_termination_grace_default_covers_the_worst_case_drain(rendered):
    # REST drains for up to --shutdown_grace_s, then gRPC for as long again: 2 * 25 + 5.
    assert the_isvc(rendered["standard-hpa"])["spec"]["predictor"]["terminationGracePeriodSeconds"] == 55
    explicit = the_isvc(rendered["pvc-external"])
    assert explicit["spec"]["predictor"]["terminationGracePeriodSeconds"] == 45
    assert "--shutdown_grace_s=10" in predictor_container(explicit)["args"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_kubernetes_api_token_in_the_predictor(rendered, value_set):
    """The server never calls the Kubernetes API (``ssd-detect --isvc`` does, from the caller's side, with
    the caller's kubeconfig): no token is mounted, also when the chart does not create the account."""
    docs = rendered[value_set]
    assert the_isvc(docs)["spec"]["predictor"]["automountServiceAccountToken"] is False
    for account in (d for d in docs if d["kind"] == "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False
    for pod in (d for d in docs if d["kind"] == "Pod"):
        assert pod["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_container_is_non_root_with_read_only_root_filesystem(rendered, value_set):
    isvc = the_isvc(rendered[value_set])
    predictor = isvc["spec"]["predictor"]
    container = predictor_container(isvc)
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc.get("runAsUser", 1000) != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    if "securityContext" in predictor:  # Standard mode, or Knative with kubernetes.podspec-securitycontext
        assert predictor["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in predictor["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be a writable emptyDir"
    env = env_of(container)
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    for name in ("HOME", "TMPDIR", "KERAS_HOME", "MPLCONFIGDIR"):
        assert env[name].startswith("/tmp"), f"{name} must point under /tmp"


def test_gpu_limit_by_default_and_not_on_cpu(rendered):
    gpu = predictor_container(the_isvc(rendered["default"]))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert not gpu["image"].endswith("-cpu")
    cpu = predictor_container(the_isvc(rendered["cpu"]))
    assert not any("gpu" in k for k in cpu["resources"].get("limits", {}))
    assert cpu["image"].endswith("-cpu")


def test_gpu_placement_values_reach_the_pod(rendered):
    predictor = the_isvc(rendered["scale-to-zero"])["spec"]["predictor"]
    assert predictor["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert predictor["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nodeAffinity" in predictor["affinity"]
    cpu = the_isvc(rendered["cpu"])["spec"]["predictor"]
    assert "tolerations" not in cpu and "nodeSelector" not in cpu


def test_knative_default_and_scale_to_zero(rendered):
    default = the_isvc(rendered["default"])
    assert default["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert "serving.kserve.io/autoscalerClass" not in default["metadata"]["annotations"]
    predictor = default["spec"]["predictor"]
    assert predictor["scaleMetric"] == "concurrency" and predictor["minReplicas"] >= 1
    assert len(predictor_container(default)["ports"]) == 1, "Knative exposes one port"
    zero = the_isvc(rendered["scale-to-zero"])["spec"]["predictor"]
    assert zero["minReplicas"] == 0 and zero["containerConcurrency"] == 16
    assert zero["annotations"]["serving.knative.dev/progress-deadline"] == "1200s"


def test_standard_mode_with_hpa_and_keda(rendered):
    hpa = the_isvc(rendered["standard-hpa"])
    assert hpa["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert hpa["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    spec = hpa["spec"]["predictor"]
    assert (spec["scaleMetric"], spec["scaleTarget"]) == ("cpu", 70)
    assert spec["autoScaling"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert "serving.knative.dev/progress-deadline" not in spec.get("annotations", {})
    keda = the_isvc(rendered["standard-keda"])
    assert keda["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    spec = keda["spec"]["predictor"]
    assert spec["minReplicas"] == 1 and "scaleMetric" not in spec
    assert spec["autoScaling"]["metrics"][0]["external"]["metric"]["backend"] == "prometheus"


def test_storage_uri_batcher_and_logger(rendered):
    isvc = the_isvc(rendered["storage-batcher"])
    predictor = isvc["spec"]["predictor"]
    container = predictor_container(isvc)
    assert env_of(container)["STORAGE_URI"] == "s3://models/ssd300-voc/v1"
    assert "--model_dir=/mnt/models" in container["args"]
    for flag in ("--max_image_pixels=20000000", "--max_request_bytes=33554432", "--shutdown_grace_s=20"):
        assert flag in container["args"]
    assert predictor["batcher"] == {"maxBatchSize": 16, "maxLatency": 20, "timeout": 30}
    assert predictor["logger"]["mode"] == "response"
    assert predictor["serviceAccountName"] == "ssd-voc-sa"
    assert predictor["imagePullSecrets"] == [{"name": "regcred"}]
    assert "@sha256:" in container["image"]
    sa = next(d for d in rendered["storage-batcher"] if d["kind"] == "ServiceAccount")
    assert sa["secrets"] == [{"name": "s3creds"}]


def test_names_fit_kubernetes_limits(rendered):
    isvc = the_isvc(rendered["pvc-external"])
    assert len(isvc["metadata"]["name"]) <= 45
    assert not isvc["metadata"]["name"].endswith("-")
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "ml-models"
    assert not [d for d in rendered["pvc-external"] if d["kind"] == "ServiceAccount"]
    for docs in rendered.values():
        for doc in docs:
            assert len(doc["metadata"]["name"]) <= 63
            assert all(len(v) <= 63 for v in doc["metadata"].get("labels", {}).values())


def test_helm_test_hook_posts_an_image_through_v1(rendered):
    docs = rendered["default"]
    pod = next(d for d in docs if d["kind"] == "Pod")
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    for hook in (pod, configmap):
        assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command = pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["python3", "/scripts/smoke_test.py"]
    assert f"--url=http://{RELEASE}-ssd-detector-predictor.{NAMESPACE}.svc.cluster.local" in command
    assert "--model=ssd" in command
    script = (CHART / "files" / "smoke_test.py").read_text()
    assert configmap["data"]["smoke_test.py"].strip() == script.strip()
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    url_override = next(d for d in rendered["pvc-external"] if d["kind"] == "Pod")
    assert "--url=http://ssd.example.com" in url_override["spec"]["containers"][0]["command"]


# ---------------------------------------------------------------- helm lint, values schema ------------


def test_required_value_sets_exist():
    missing = [name for name in REQUIRED_SETS if name not in VALUE_SETS]
    assert not missing, f"helm/ssd-detector/ci/<name>-values.yaml missing for {missing}"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict(helm, value_set):
    proc = run_helm(helm, "lint", "--strict", str(CHART), *values_args(value_set))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("autoscaling.maxReplicas=many", "maxReplicas"),
        ("gpu.enabled=yes", "enabled"),
        ("deploymentMode=Serverless", "deploymentMode"),
        ("autoscaling.scaleMetric=qps", "scaleMetric"),
        ("predictor.scoreThreshold=1.5", "scoreThreshold"),
        ("model.storageUri=ftp://host/model", "storageUri"),
        ("autoscaling.maxReplica=3", "maxReplica"),
        ("predictor.maxImagePixels=0", "maxImagePixels"),
        ("predictor.maxRequestBytes=0", "maxRequestBytes"),
        ("predictor.shutdownGraceSeconds=-1", "shutdownGraceSeconds"),
        ("predictor.shutdownGraceSeconds=null", "shutdownGraceSeconds"),
        ("predictor.terminationGracePeriodSeconds=0", "terminationGracePeriodSeconds"),
    ],
)
def test_values_schema_rejects_bad_values(helm, setting, complaint):
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--set", setting)
    assert proc.returncode != 0, f"--set {setting} was accepted"
    assert complaint in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        (["autoscaling.minReplicas=5", "autoscaling.maxReplicas=2"], "must not exceed"),
        (["deploymentMode=Standard", "autoscaling.minReplicas=0"], "needs deploymentMode=Knative"),
        (["deploymentMode=Standard"], "scaleMetric=concurrency needs deploymentMode=Knative"),
        (["logger.enabled=true"], "logger.url"),
        (["predictor.runtime=onnxruntime"], "predictor.runtime=onnxruntime is for CPU nodes"),
        (["predictor.terminationGracePeriodSeconds=60"], "needs deploymentMode=Standard"),
        (["timeoutSeconds=20"], "shutdownGraceSeconds (25) must stay below"),
        (
            [
                "deploymentMode=Standard",
                "autoscaling.scaleMetric=cpu",
                "predictor.terminationGracePeriodSeconds=25",
            ],
            "shutdownGraceSeconds (25) must stay below",
        ),
    ],
)
def test_template_rejects_inconsistent_values(helm, settings, complaint):
    args = [arg for s in settings for arg in ("--set", s)]
    proc = run_helm(helm, "template", RELEASE, str(CHART), *args)
    assert proc.returncode != 0, f"{settings} was accepted"
    assert complaint in proc.stderr, proc.stderr


def test_values_schema_accepts_defaults_and_value_sets():
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert not list(validator.iter_errors(defaults))
    bad = copy.deepcopy(defaults)
    bad["autoscaling"]["maxReplicas"] = "many"
    assert [e.message for e in validator.iter_errors(bad)] == ["'many' is not of type 'integer'"]


def test_every_values_key_has_a_comment():
    lines = (CHART / "values.yaml").read_text().splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        previous = lines[i - 1].strip() if i else ""
        if not previous.startswith("#") and " # " not in line:
            uncommented.append(f"values.yaml:{i + 1}: {stripped}")
    assert not uncommented, "keys without a comment:\n" + "\n".join(uncommented)


def test_notes_print_curl_and_client_commands(helm):
    proc = run_helm(helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "/v1/models/ssd:predict" in notes and "curl " in notes
    assert "ssd-detect --url" in notes and f"--isvc {RELEASE}-ssd-detector --namespace {NAMESPACE}" in notes
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes
    assert "Canary:" not in notes


@pytest.mark.parametrize(
    ("value_set", "where"),
    [
        ("standard-canary", f"Deployment {RELEASE}-ssd-detector-v2-predictor"),
        ("knative-canary", "the new revision"),
    ],
)
def test_notes_name_the_canary(helm, value_set, where):
    proc = run_helm(
        helm, "install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client", *values_args(value_set)
    )
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "Canary: 10% of the requests go to s3://models/ssd/v2" in notes and where in notes
    assert "ssd-detect compare" in notes


def test_yamllint_static_chart_files_and_manifests():
    files = [CHART / "Chart.yaml", CHART / "values.yaml", *sorted((CHART / "ci").glob("*.yaml"))]
    files += sorted(MANIFESTS.glob("*.yaml"))
    proc = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-f", "parsable", "-d", YAMLLINT_CONFIG, *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------- manifests/ ---------------------------


@pytest.fixture(scope="session")
def render_manifests():
    return _load_module("render_manifests", REPO / "scripts" / "render_manifests.py")


def test_manifests_match_helm_template(helm, render_manifests):
    problems = render_manifests.drift(render_manifests.render(helm))
    assert not problems, "manifests/ drifted from the chart; run `make manifests`:\n" + "\n".join(problems)


def test_manifests_kustomization_builds_the_chart_objects(helm, rendered):
    kubectl = Path(helm).with_name("kubectl")
    if not kubectl.is_file():
        pytest.skip(f"kubectl not next to helm ({kubectl})")
    proc = subprocess.run([kubectl, "kustomize", MANIFESTS], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    built = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(proc.stdout) if d)
    assert built == [("InferenceService", "ssd-detector"), ("ServiceAccount", "ssd-detector")]


def test_chart_app_version_matches_the_package_version():
    """The chart's default image tag (appVersion) is the tag `make image` gives the package version."""
    import tomllib

    package = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == package
