"""What a stock KServe + Knative + Kubernetes does to a rendered InferenceService before a pod runs.

Each function re-states one webhook's defaulting or validation rule, read from the upstream Go source named
in its docstring; only the parts that apply to a custom predictor (one ``kserve-container`` in
``spec.predictor``) are kept. Sources (mirrored snapshots):

* KServe ``kserve/kserve`` master ``aaac4e29`` (2026-08, the 0.21 line; the RawDeployment canary of 0.20+,
  kserve/kserve#5672, commit ``43ec86b5``) and tag ``v0.14.0``;
* Knative ``knative/serving`` main ``98e5ef90`` (2026-08);
* Kubernetes ``kubernetes/kubernetes`` ``pkg/apis/core/validation/validation.go`` and
  ``pkg/apis/core/v1/defaults.go``.

``admit(isvc, platform)`` runs them in the order the API server does (KServe's mutating then validating
webhook on the InferenceService; Knative's webhook on the Knative Service KServe creates in Knative mode;
Kubernetes' pod defaulting and validation; KServe's pod mutator) and returns the problems found, each
prefixed with the rule's name.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

KSERVE_MASTER = "master"
KSERVE_V0_14 = "v0.14.0"

# kserve/kserve config/configmap/inferenceservice.yaml, key inferenceService.resource (master); v0.14.0
# hard-codes the same values as `defaultResource` in pkg/apis/serving/v1beta1/inference_service_defaults.go.
DEFAULT_ISVC_RESOURCE = {"cpuRequest": "1", "cpuLimit": "1", "memoryRequest": "2Gi", "memoryLimit": "2Gi"}

# kserve/kserve config/configmap/inferenceservice.yaml, key metricsAggregator (defaults "false").
DEFAULT_METRICS_AGGREGATOR = {"enableMetricAggregation": "false", "enablePrometheusScraping": "false"}

# knative/serving config/core/configmaps/features.yaml and pkg/apis/config/features.go: these pod-spec
# flags default to "disabled" (kubernetes.podspec-volumes-emptydir defaults to "enabled").
KNATIVE_DEFAULT_ENABLED = frozenset({"kubernetes.podspec-volumes-emptydir"})


@dataclass(frozen=True)
class Platform:
    """The cluster: KServe release, enabled Knative feature flags and KServe's config map values."""

    kserve: str = KSERVE_MASTER
    knative_features: frozenset[str] = KNATIVE_DEFAULT_ENABLED
    isvc_resource: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ISVC_RESOURCE))
    metrics_aggregator: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_METRICS_AGGREGATOR))


# ---------------------------------------------------------------- quantities ----------------------------

_SUFFIX = {
    "": 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(value: str | int | float) -> Fraction:
    """A Kubernetes resource quantity ("500m", "2Gi", 4) as an exact number."""
    match = _QUANTITY.match(str(value).strip())
    if match is None or match[2] not in _SUFFIX:
        raise ValueError(f"not a quantity: {value!r}")
    return Fraction(match[1]) * _SUFFIX[match[2]]


# ---------------------------------------------------------------- helpers -------------------------------


def annotations_of(isvc: dict[str, Any]) -> dict[str, str]:
    return isvc.get("metadata", {}).get("annotations") or {}


def predictor_of(isvc: dict[str, Any]) -> dict[str, Any]:
    return isvc["spec"]["predictor"]


def deployment_mode(isvc: dict[str, Any]) -> str:
    """The mode KServe acts on: the annotation with the legacy names folded (default: Knative)."""
    mode = annotations_of(isvc).get("serving.kserve.io/deploymentMode", "Knative")
    return {"Serverless": "Knative", "RawDeployment": "Standard"}.get(mode, mode)


# Fields of spec.predictor that are KServe's ComponentExtensionSpec, not the pod spec
# (kserve/kserve pkg/apis/serving/v1beta1/component.go, ComponentExtensionSpec).
COMPONENT_EXTENSION_FIELDS = frozenset(
    {
        "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency", "timeout",
        "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy",
        "autoScaling", "name", "storageUris",
    }
)  # fmt: skip


def pod_spec_of(isvc: dict[str, Any]) -> dict[str, Any]:
    """The CustomPredictor's inline PodSpec (kserve/kserve pkg/apis/serving/v1beta1/predictor_custom.go)."""
    return {k: v for k, v in predictor_of(isvc).items() if k not in COMPONENT_EXTENSION_FIELDS}


# ---------------------------------------------------------------- KServe defaulting ---------------------


def kserve_default(isvc: dict[str, Any], platform: Platform) -> dict[str, Any]:
    """KServe's mutating webhook on the InferenceService; returns a defaulted copy.

    kserve/kserve pkg/apis/serving/v1beta1/inference_service_defaults.go: ``DefaultInferenceService`` folds
    the legacy mode names (master only) and calls ``CustomPredictor.Default`` (predictor_custom.go), which
    names a lone container ``kserve-container`` and calls ``setResourceRequirementDefaults``: every cpu/memory
    request and limit missing from the container is filled from inferenceservice-config's
    ``inferenceService.resource`` (v0.14.0: the hard-coded ``defaultResource``, cpu 1 / memory 2Gi).
    """
    out = copy.deepcopy(isvc)
    annotations = out.setdefault("metadata", {}).setdefault("annotations", {})
    if platform.kserve != KSERVE_V0_14:
        legacy = {"RawDeployment": "Standard", "Serverless": "Knative"}
        mode = annotations.get("serving.kserve.io/deploymentMode")
        if mode in legacy:
            annotations["serving.kserve.io/deploymentMode"] = legacy[mode]
    containers = predictor_of(out).setdefault("containers", [{}])
    if len(containers) == 1 or not containers[0].get("name"):
        containers[0]["name"] = "kserve-container"
    resources = containers[0].setdefault("resources", {})
    requests = resources.setdefault("requests", {})
    limits = resources.setdefault("limits", {})
    config = platform.isvc_resource
    for target, key, name in (
        (requests, "cpuRequest", "cpu"),
        (requests, "memoryRequest", "memory"),
        (limits, "cpuLimit", "cpu"),
        (limits, "memoryLimit", "memory"),
    ):
        if config.get(key) and name not in target:
            target[name] = config[key]
    return out


# ---------------------------------------------------------------- KServe validation ---------------------

# kserve/kserve pkg/apis/serving/v1beta1/inference_service_validation.go, IsvcNameFmt.
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# kserve/kserve pkg/constants/constants.go, AutoscalerAllowedClassList (v0.14.0: hpa, external).
AUTOSCALER_CLASSES = {KSERVE_MASTER: ("hpa", "external", "keda", "none"), KSERVE_V0_14: ("hpa", "external")}
# kserve/kserve pkg/constants/constants.go, AutoscalerAllowedHPAMetricsList / AutoscalerAllowedKPAMetricsList.
HPA_METRICS = ("cpu", "memory")
KPA_METRICS = ("concurrency", "rps")
# kserve/kserve pkg/constants/constants.go, DeploymentModeType. v0.14.0 knows only the old names, and its
# controller (pkg/controller/v1beta1/inferenceservice/utils/utils.go, GetDeploymentMode) silently replaces
# any other value by the configured default (Serverless): "Standard" would run in Knative mode there.
MODE_NAMES = {
    KSERVE_MASTER: ("Knative", "Standard", "Serverless", "RawDeployment", "ModelMesh"),
    KSERVE_V0_14: ("Serverless", "RawDeployment", "ModelMesh"),
}
# kserve/kserve pkg/validation/env_policy.go, DefaultBlockedEnvVars (master).
BLOCKED_ENV = ("PYTHONPATH",)


def kserve_validate(isvc: dict[str, Any], platform: Platform) -> list[str]:
    """KServe's validating webhook, ``validateInferenceService`` (inference_service_validation.go), on a
    defaulted InferenceService."""
    release = platform.kserve
    errors: list[str] = []
    annotations = annotations_of(isvc)
    predictor = predictor_of(isvc)
    name = isvc["metadata"]["name"]
    if not ISVC_NAME.match(name):
        errors.append(f"kserve name: {name!r} does not match {ISVC_NAME.pattern}")
    mode = annotations.get("serving.kserve.io/deploymentMode")
    if mode is not None and mode not in MODE_NAMES[release]:
        errors.append(
            f"kserve {release} deploymentMode: {mode!r} is not one of {MODE_NAMES[release]} (ignored)"
        )
    cls = annotations.get("serving.kserve.io/autoscalerClass")
    if cls is not None and cls not in AUTOSCALER_CLASSES[release]:
        errors.append(f"kserve {release} autoscalerClass: [{cls}] is not a supported autoscaler class type")
    if release == KSERVE_MASTER:
        for container in predictor.get("containers", []):
            for env in container.get("env", []):
                if env["name"] in BLOCKED_ENV:
                    errors.append(
                        f"kserve env: setting {env['name']} in container {container['name']!r} is not allowed"
                    )
    errors += _validate_component_extension(predictor)
    errors += _validate_autoscaling(annotations, predictor, release)
    return errors


def _validate_component_extension(predictor: dict[str, Any]) -> list[str]:
    """``ComponentExtensionSpec.Validate`` (kserve/kserve pkg/apis/serving/v1beta1/component.go):
    containerConcurrency >= 0, 0 <= minReplicas <= maxReplicas (unless maxReplicas is 0), logger mode."""
    errors = []
    cc = predictor.get("containerConcurrency")
    if cc is not None and cc < 0:
        errors.append("kserve containerConcurrency: must be >= 0")
    low, high = predictor.get("minReplicas", 1), predictor.get("maxReplicas", 0)
    if low < 0 or high < 0:
        errors.append("kserve replicas: must be >= 0")
    if high != 0 and low > high:
        errors.append("kserve replicas: minReplicas must be less than or equal to maxReplicas")
    logger = predictor.get("logger")
    if logger is not None and logger.get("mode") not in ("all", "request", "response"):
        errors.append(f"kserve logger: mode {logger.get('mode')!r} is invalid")
    return errors


def _validate_autoscaling(annotations: dict[str, str], predictor: dict[str, Any], release: str) -> list[str]:
    """``validateAutoScalingCompExtension``: Standard mode checks the HPA or KEDA rules by
    serving.kserve.io/autoscalerClass; other modes the Knative (KPA) rules. v0.14.0 checks the HPA rules
    only for ``RawDeployment`` (so a ``Standard`` annotation gets the KPA rules there)."""
    mode = annotations.get("serving.kserve.io/deploymentMode", "")
    cls = annotations.get("serving.kserve.io/autoscalerClass", "hpa")
    knative_class = annotations.get("autoscaling.knative.dev/class", "")
    if release == KSERVE_V0_14:
        if mode == "RawDeployment" or knative_class == "hpa.autoscaling.knative.dev":
            return _validate_hpa(predictor, with_metrics=False)
        return _validate_kpa(predictor)
    if mode == "Standard":
        if cls == "hpa":
            return _validate_hpa(predictor, with_metrics=True)
        if cls == "keda":
            return _validate_keda(predictor)
        return []
    if knative_class == "hpa.autoscaling.knative.dev":
        return _validate_hpa(predictor, with_metrics=True)
    return _validate_kpa(predictor)


def _validate_hpa(predictor: dict[str, Any], with_metrics: bool) -> list[str]:
    """``validateScalingHPACompExtension``: scaleMetric cpu (default) or memory; a target above 100 is
    rejected whatever the metric (the Go condition is ``metric == cpu && target < 1 || target > 100``);
    autoScaling.metrics may hold only Resource entries."""
    errors = []
    metric = predictor.get("scaleMetric", "cpu")
    if metric not in HPA_METRICS:
        return [f"kserve hpa: [{metric}] is not a supported metric"]
    target = predictor.get("scaleTarget")
    if target is not None and ((metric == "cpu" and target < 1) or target > 100):
        errors.append("kserve hpa: the target utilization percentage should be a [1-100] integer")
    if target is not None and metric == "memory" and target < 1:
        errors.append("kserve hpa: the target memory should be greater than 1 MiB")
    if with_metrics:
        for spec in (predictor.get("autoScaling") or {}).get("metrics", []):
            if spec.get("type") != "Resource":
                errors.append(f"kserve hpa: invalid HPA metric source type with value [{spec.get('type')}]")
            elif not spec.get("resource"):
                errors.append("kserve hpa: metricSpec.Resource is not set for resource metric source type")
    return errors


def _validate_keda(predictor: dict[str, Any]) -> list[str]:
    """``validateScalingKedaCompExtension``: no scaleMetric; External/PodMetric entries need a query and a
    target value; Resource entries cpu (Utilization) or memory."""
    errors = []
    if "scaleMetric" in predictor:
        errors.append("kserve keda: ScaleMetric is not supported for KEDA")
    for spec in (predictor.get("autoScaling") or {}).get("metrics", []):
        kind = spec.get("type")
        if kind in ("External", "PodMetric"):
            body = spec.get("external" if kind == "External" else "podmetric") or {}
            if not body:
                errors.append(f"kserve keda: metricSpec.{kind} is not set")
                continue
            if not body.get("metric", {}).get("query"):
                errors.append("kserve keda: the query should not be empty")
            if body.get("target", {}).get("value") in (None, ""):
                errors.append("kserve keda: the target threshold value should not be empty")
        elif kind == "Resource":
            resource = spec.get("resource") or {}
            target_type = resource.get("target", {}).get("type")
            if resource.get("name") == "cpu" and target_type != "Utilization":
                errors.append("kserve keda: the cpu target value type should be Utilization")
            elif resource.get("name") not in ("cpu", "memory"):
                errors.append(f"kserve keda: resource type {resource.get('name')} is not supported")
        else:
            errors.append(f"kserve keda: unknown KEDA metric type with value [{kind}]")
    return errors


def _validate_kpa(predictor: dict[str, Any]) -> list[str]:
    """``validateScalingKPACompExtension``: scaleMetric concurrency (default) or rps (rps target >= 1);
    no deploymentStrategy."""
    errors = []
    if "deploymentStrategy" in predictor:
        errors.append("kserve kpa: customizing deploymentStrategy is only supported for raw deployment mode")
    metric = predictor.get("scaleMetric", "concurrency")
    if metric not in KPA_METRICS:
        errors.append(f"kserve kpa: [{metric}] is not a supported metric")
    if metric == "rps" and predictor.get("scaleTarget", 1) < 1:
        errors.append("kserve kpa: the target for rps should be greater than 1")
    return errors


# ---------------------------------------------------------------- Knative validation --------------------

# knative/serving pkg/apis/serving/fieldmask.go, PodSpecMask: always allowed, and allowed per feature flag.
KNATIVE_POD_FIELDS = frozenset(
    {"serviceAccountName", "containers", "volumes", "imagePullSecrets", "enableServiceLinks"}
)
KNATIVE_POD_FEATURE_FIELDS = {
    "affinity": "kubernetes.podspec-affinity",
    "topologySpreadConstraints": "kubernetes.podspec-topologyspreadconstraints",
    "hostAliases": "kubernetes.podspec-hostaliases",
    "nodeSelector": "kubernetes.podspec-nodeselector",
    "runtimeClassName": "kubernetes.podspec-runtimeclassname",
    "tolerations": "kubernetes.podspec-tolerations",
    "securityContext": "kubernetes.podspec-securitycontext",
    "shareProcessNamespace": "kubernetes.podspec-shareprocessnamespace",
    "priorityClassName": "kubernetes.podspec-priorityclassname",
    "schedulerName": "kubernetes.podspec-schedulername",
    "initContainers": "kubernetes.podspec-init-containers",
    "dnsPolicy": "kubernetes.podspec-dnspolicy",
    "dnsConfig": "kubernetes.podspec-dnsconfig",
    "hostIPC": "kubernetes.podspec-hostipc",
    "hostPID": "kubernetes.podspec-hostpid",
    "hostNetwork": "kubernetes.podspec-hostnetwork",
}
# fieldmask.go, ContainerMask.
KNATIVE_CONTAINER_FIELDS = frozenset(
    {
        "name", "args", "command", "env", "workingDir", "envFrom", "image", "imagePullPolicy",
        "livenessProbe", "ports", "readinessProbe", "resources", "securityContext", "startupProbe",
        "terminationMessagePath",
        "terminationMessagePolicy", "volumeMounts",
    }
)  # fmt: skip
# fieldmask.go, SecurityContextMask (privileged only when false; capabilities.add needs a flag).
KNATIVE_CONTAINER_SECURITY_FIELDS = frozenset(
    {"capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup", "runAsNonRoot",
     "allowPrivilegeEscalation", "seccompProfile", "privileged"}
)  # fmt: skip
# fieldmask.go, PodSecurityContextMask (with kubernetes.podspec-securitycontext enabled).
KNATIVE_POD_SECURITY_FIELDS = frozenset(
    {"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "supplementalGroups", "seccompProfile"}
)
# fieldmask.go, VolumeSourceMask.
KNATIVE_VOLUME_SOURCES = {
    "secret": None, "configMap": None, "projected": None,
    "emptyDir": "kubernetes.podspec-volumes-emptydir",
    "persistentVolumeClaim": "kubernetes.podspec-persistent-volume-claim",
    "hostPath": "kubernetes.podspec-volumes-hostpath", "csi": "kubernetes.podspec-volumes-csi",
    "ephemeral": "kubernetes.podspec-volumes-ephemeral", "image": "kubernetes.podspec-volumes-image",
}  # fmt: skip
# fieldmask.go, ProbeMask.
KNATIVE_PROBE_FIELDS = frozenset(
    {"httpGet", "tcpSocket", "exec", "grpc", "initialDelaySeconds", "timeoutSeconds", "periodSeconds",
     "successThreshold", "failureThreshold", "terminationGracePeriodSeconds"}
)  # fmt: skip
# knative/serving pkg/apis/serving/k8s_validation.go: validPortNames, reservedPorts
# (networking.BackendHTTPPort 8012, BackendHTTP2Port 8013, QueueAdminPort 8022,
# AutoscalingQueueMetricsPort 9090, UserQueueMetricsPort
# 9091, runtime.ProfilingDefaultPort 8008), reservedEnvVars, reservedPaths.
KNATIVE_PORT_NAMES = ("h2c", "http1", "")
KNATIVE_RESERVED_PORTS = frozenset({8012, 8013, 8022, 9090, 9091, 8008})
KNATIVE_RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})
KNATIVE_RESERVED_PATHS = frozenset({"/", "/dev", "/dev/log"})


def knative_validate(pod_spec: dict[str, Any], features: frozenset[str]) -> list[str]:
    """Knative's webhook on the revision template KServe builds from the predictor (Knative mode):
    ``ValidatePodSpec`` (knative/serving pkg/apis/serving/k8s_validation.go) with the field masks of
    pkg/apis/serving/fieldmask.go under the given enabled feature flags. A masked field set in the spec is
    rejected with "must not set the field(s)"."""
    errors = []
    for key in pod_spec:
        flag = KNATIVE_POD_FEATURE_FIELDS.get(key)
        if key == "automountServiceAccountToken" and pod_spec[key] is False:
            continue  # "Only allow setting AutomountServiceAccountToken to false"
        if key not in KNATIVE_POD_FIELDS and (flag is None or flag not in features):
            need = f" (needs {flag})" if flag else ""
            errors.append(f"knative podspec: must not set the field(s): {key}{need}")
    if "securityContext" in pod_spec and "kubernetes.podspec-securitycontext" in features:
        for key in set(pod_spec["securityContext"]) - KNATIVE_POD_SECURITY_FIELDS:
            errors.append(f"knative podspec: must not set the field(s): securityContext.{key}")
    errors += _knative_volumes(pod_spec.get("volumes", []), features)
    errors += _knative_read_only_mounts(pod_spec)
    containers = pod_spec.get("containers", [])
    ports = [port for c in containers for port in c.get("ports", [])]
    if len(ports) > 1:
        errors.append("knative ports: more than one container port is set (only a single port is allowed)")
    user_port = ports[0] if ports else {"name": "http", "containerPort": 8080}
    for container in containers:
        errors += _knative_container(container, user_port, {v["name"] for v in pod_spec.get("volumes", [])})
    return errors


def _knative_read_only_mounts(pod_spec: dict[str, Any]) -> list[str]:
    """``validateVolumeMounts`` (k8s_validation.go): a mount of anything but an emptyDir (or a PVC with
    kubernetes.podspec-persistent-volume-write) must be readOnly ("volume mount should be readOnly for
    this type of volume")."""
    kinds = {v["name"]: set(v) - {"name"} for v in pod_spec.get("volumes", [])}
    errors = []
    for container in pod_spec.get("containers", []):
        for mount in container.get("volumeMounts", []):
            if "emptyDir" not in kinds.get(mount["name"], set()) and not mount.get("readOnly"):
                errors.append(
                    f"knative volumeMounts: {mount['name']} should be readOnly for this type of volume"
                )
    return errors


def _knative_volumes(volumes: list[dict[str, Any]], features: frozenset[str]) -> list[str]:
    errors = []
    for volume in volumes:
        for key in set(volume) - {"name"}:
            flag = KNATIVE_VOLUME_SOURCES.get(key, "unsupported")
            if flag is not None and flag not in features:
                errors.append(f"knative volumes: must not set the field(s): {volume['name']}.{key} ({flag})")
    return errors


def _knative_container(container: dict[str, Any], user_port: dict[str, Any], volumes: set[str]) -> list[str]:
    """``ValidateUserContainer`` / ``validate`` in k8s_validation.go for the one serving container."""
    name = container.get("name", "")
    errors = [
        f"knative container {name}: must not set the field(s): {key}"
        for key in set(container) - KNATIVE_CONTAINER_FIELDS
    ]
    if name == "queue-proxy":
        errors.append('knative container: "queue-proxy" is a reserved container name')
    for env in container.get("env", []):
        if env["name"] in KNATIVE_RESERVED_ENV:
            errors.append(f"knative env: {env['name']!r} is a reserved environment variable")
    for port in container.get("ports", [])[:1]:
        if port.get("name", "") not in KNATIVE_PORT_NAMES:
            errors.append(f"knative ports: Port name {port.get('name')} is not allowed (h2c, http1 or empty)")
        if port.get("containerPort") in KNATIVE_RESERVED_PORTS:
            errors.append(f"knative ports: {port['containerPort']} is a reserved port")
        if port.get("protocol", "TCP") != "TCP":
            errors.append(f"knative ports: protocol {port['protocol']} is invalid")
        if set(port) - {"name", "containerPort", "protocol"}:
            extra = sorted(set(port) - {"name", "containerPort", "protocol"})
            errors.append(f"knative ports: must not set the field(s): {extra}")
    sc = container.get("securityContext") or {}
    for key in set(sc) - KNATIVE_CONTAINER_SECURITY_FIELDS:
        errors.append(f"knative securityContext: must not set the field(s): {key}")
    if sc.get("privileged") is True:
        errors.append("knative securityContext: must not set the field(s): privileged (only false)")
    if (sc.get("capabilities") or {}).get("add"):
        errors.append(
            "knative securityContext: capabilities.add needs kubernetes.containerspec-addcapabilities"
        )
    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
        errors += _knative_probe(probe_name, container.get(probe_name), user_port)
    for mount in container.get("volumeMounts", []):
        if mount["name"] not in volumes:
            errors.append(f"knative volumeMounts: volume {mount['name']!r} does not exist")
        if mount["mountPath"].rstrip("/") in KNATIVE_RESERVED_PATHS or mount["mountPath"] == "/":
            errors.append(f"knative volumeMounts: mountPath {mount['mountPath']!r} is a reserved path")
    return errors


def _knative_probe(name: str, probe: dict[str, Any] | None, user_port: dict[str, Any]) -> list[str]:
    """``validateProbe`` / ``validateReadinessProbe``: masked fields, exactly one handler, a named probe port
    must be the serving port's name; readiness with periodSeconds > 0 needs timeout and failure >= 1."""
    if probe is None:
        return []
    errors = [
        f"knative {name}: must not set the field(s): {key}" for key in set(probe) - KNATIVE_PROBE_FIELDS
    ]
    handlers = [h for h in ("httpGet", "tcpSocket", "exec", "grpc") if h in probe]
    if len(handlers) != 1:
        errors.append(
            f"knative {name}: expected exactly one of httpGet, tcpSocket, exec, grpc; got {handlers}"
        )
    for handler in ("httpGet", "tcpSocket"):
        port = (probe.get(handler) or {}).get("port")
        if isinstance(port, str) and port != user_port.get("name"):
            errors.append(f"knative {name}: {handler}.port {port!r}: Probe port must match container port")
    low = probe.get("timeoutSeconds", 1) < 1 or probe.get("failureThreshold", 3) < 1
    if name == "readinessProbe" and probe.get("periodSeconds", 0) > 0 and low:
        errors.append(f"knative {name}: timeoutSeconds and failureThreshold must be >= 1")
    return errors


# knative/serving config/core/configmaps/defaults.yaml: max-revision-timeout-seconds "600",
# container-concurrency-max-limit "1000" (allow-container-concurrency-zero "true").
KNATIVE_MAX_REVISION_TIMEOUT = 600
KNATIVE_CONTAINER_CONCURRENCY_MAX = 1000
_GO_DURATION = re.compile(r"^(?:([0-9]+(?:\.[0-9]*)?)(ns|us|µs|ms|s|m|h))+$")
_GO_UNITS = {"ns": Fraction(1, 10**9), "us": Fraction(1, 10**6), "µs": Fraction(1, 10**6),
             "ms": Fraction(1, 1000), "s": 1, "m": 60, "h": 3600}  # fmt: skip


def go_duration_seconds(text: str) -> Fraction:
    """A Go ``time.ParseDuration`` string ("900s", "1m30s") in seconds."""
    if not _GO_DURATION.match(text):
        raise ValueError(f"not a Go duration: {text!r}")
    parts = re.findall(r"([0-9]+(?:\.[0-9]*)?)(ns|us|µs|ms|s|m|h)", text)
    return sum((Fraction(number) * _GO_UNITS[unit] for number, unit in parts), Fraction(0))


def knative_validate_revision(predictor: dict[str, Any]) -> list[str]:
    """The revision-level checks on what KServe copies into the Knative Service (Knative mode):
    ``validateTimeoutSeconds`` and ``validateProgressDeadlineAnnotation`` (knative/serving
    pkg/apis/serving/v1/revision_validation.go), ``ValidateContainerConcurrency``
    (pkg/apis/serving/metadata_validation.go), with config-defaults' limits."""
    errors = []
    timeout = predictor.get("timeout", 0)
    if not 0 <= timeout <= KNATIVE_MAX_REVISION_TIMEOUT:
        errors.append(f"knative timeoutSeconds: {timeout} is outside [0, {KNATIVE_MAX_REVISION_TIMEOUT}]")
    cc = predictor.get("containerConcurrency")
    if cc is not None and not 0 <= cc <= KNATIVE_CONTAINER_CONCURRENCY_MAX:
        errors.append(
            f"knative containerConcurrency: {cc} is outside [0, {KNATIVE_CONTAINER_CONCURRENCY_MAX}]"
        )
    deadline = (predictor.get("annotations") or {}).get("serving.knative.dev/progress-deadline")
    if deadline:
        try:
            seconds = go_duration_seconds(deadline)
        except ValueError:
            errors.append(f"knative progress-deadline: invalid value {deadline!r}")
        else:
            if seconds.denominator != 1:
                errors.append(f"knative progress-deadline={deadline} is not at second precision")
    return errors


# ---------------------------------------------------------------- Kubernetes ----------------------------

# kubernetes/kubernetes pkg/apis/core/helper/helpers.go: IsOvercommitAllowed is false for extended
# resources (a name with a domain outside kubernetes.io) and hugepages; native: cpu, memory, storage.
NATIVE_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage", "storage"})


def kubernetes_default_requests(resources: dict[str, Any]) -> dict[str, Any]:
    """kubernetes/kubernetes pkg/apis/core/v1/defaults.go ``SetDefaults_Pod``: a resource with a limit and no
    request gets the limit as its request. Returns a defaulted copy."""
    out = copy.deepcopy(resources)
    requests = out.setdefault("requests", {})
    for name, limit in (out.get("limits") or {}).items():
        requests.setdefault(name, limit)
    return out


def kubernetes_validate_resources(container: dict[str, Any]) -> list[str]:
    """kubernetes/kubernetes pkg/apis/core/validation/validation.go ``validateResourceRequirements``:
    request <= limit for every resource; extended resources (nvidia.com/gpu) must be whole numbers, need a
    limit ("Limit must be set for non overcommitable resources") and a request equal to it."""
    name = container.get("name", "")
    resources = kubernetes_default_requests(container.get("resources") or {})
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    errors = []
    for resource, quantity in requests.items():
        where = f"kubernetes {name} requests[{resource}]"
        extended = resource not in NATIVE_RESOURCES and not resource.startswith("hugepages-")
        if extended and parse_quantity(quantity).denominator != 1:
            errors.append(f"kubernetes {name} requests[{resource}]: {quantity} must be an integer")
        if resource in limits:
            limit = parse_quantity(limits[resource])
            if extended and parse_quantity(quantity) != limit:
                errors.append(f"{where}: {quantity} must be equal to {resource} limit of {limits[resource]}")
            elif parse_quantity(quantity) > limit:
                errors.append(
                    f"{where}: {quantity} must be less than or equal to {resource} limit of {limits[resource]}"  # noqa: E501
                )
        elif extended:
            errors.append(
                f"kubernetes {name} limits[{resource}]: Limit must be set for non overcommitable resources"
            )
    return errors


# ---------------------------------------------------------------- KServe pod mutation -------------------


def kserve_pod_metrics_annotations(pod_annotations: dict[str, str], platform: Platform) -> dict[str, str]:
    """KServe's pod mutator, ``InjectMetricsAggregator`` (kserve/kserve
    pkg/webhook/admission/pod/metrics_aggregate_injector.go): a pod without the enable-metric-aggregation /
    enable-prometheus-scraping annotations gets inferenceservice-config's metricsAggregator values; with
    scraping "true" it sets prometheus.io/port to the queue-proxy's port 9091 (9088 with aggregation) and
    prometheus.io/path to /metrics, whatever the pod said. Returns the pod's annotations afterwards."""
    out = dict(pod_annotations)
    aggregation = out.setdefault(
        "serving.kserve.io/enable-metric-aggregation", platform.metrics_aggregator["enableMetricAggregation"]
    )
    scraping = out.setdefault(
        "serving.kserve.io/enable-prometheus-scraping",
        platform.metrics_aggregator["enablePrometheusScraping"],
    )
    if scraping == "true":
        out["prometheus.io/port"] = "9088" if aggregation == "true" else "9091"
        out["prometheus.io/path"] = "/metrics"
    return out


# ---------------------------------------------------------------- network policy ------------------------

# knative/serving pkg/apis/networking/ports.go: the queue-proxy's ports in every Knative-mode pod.
KNATIVE_QUEUE_HTTP1_PORT = 8012  # BackendHTTPPort: the revision's HTTP/1 traffic (activator, gateway)
KNATIVE_QUEUE_H2C_PORT = 8013  # BackendHTTP2Port: the same for h2c
KNATIVE_QUEUE_ADMIN_PORT = 8022  # QueueAdminPort: drain and health, called from inside the pod
KNATIVE_AUTOSCALER_METRICS_PORT = 9090  # AutoscalingQueueMetricsPort: scraped by the autoscaler
KNATIVE_USER_METRICS_PORT = 9091  # UserQueueMetricsPort: Prometheus
# kserve/kserve pkg/constants/constants.go: InferenceServiceDefaultAgentPort, the agent (batcher, logger)
# that fronts the server when spec.predictor.batcher or .logger is set.
KSERVE_AGENT_PORT = 9081
# Kubernetes labels every namespace with its name (NamespaceDefaultLabelName, since 1.22).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def kserve_predictor_pod_labels(isvc: dict[str, Any]) -> dict[str, str]:
    """The labels KServe gives the predictor's pods: ``utils.Union(sRuntimeLabels, isvc.Labels,
    predictorLabels, {InferenceServicePodLabelKey: isvc.Name, KServiceComponentLabel: "predictor"})``
    (kserve/kserve pkg/controller/v1beta1/inferenceservice/components/predictor.go; the constants are
    ``serving.kserve.io/inferenceservice`` and ``component`` in pkg/constants/constants.go)."""
    return {
        **(isvc["metadata"].get("labels") or {}),
        **(predictor_of(isvc).get("labels") or {}),
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
        "component": "predictor",
    }


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod (namespace + labels) or, with ``namespace`` None, an address
    outside the cluster (``ip``)."""

    namespace: str | None
    labels: tuple[tuple[str, str], ...] = ()
    ip: str | None = None

    @staticmethod
    def pod(namespace: str, **labels: str) -> Peer:
        return Peer(namespace, tuple(sorted(labels.items())))


def label_selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector: matchLabels and matchExpressions all hold; an empty selector selects all
    (k8s.io/apimachinery pkg/apis/meta/v1/helpers.go, LabelSelectorAsSelector)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer_matches(rule_peer: dict[str, Any], policy_namespace: str, peer: Peer) -> bool:
    """networking/v1 NetworkPolicyPeer (k8s.io/api networking/v1/types.go): ipBlock alone, or pods chosen by
    namespaceSelector AND podSelector; a podSelector alone means pods of the policy's namespace."""
    if "ipBlock" in rule_peer:
        import ipaddress

        if peer.ip is None:
            return False
        block = rule_peer["ipBlock"]
        address = ipaddress.ip_address(peer.ip)
        inside = address in ipaddress.ip_network(block["cidr"])
        return inside and not any(address in ipaddress.ip_network(c) for c in block.get("except") or [])
    if peer.namespace is None:
        return False
    if "namespaceSelector" in rule_peer:
        if not label_selector_matches(rule_peer["namespaceSelector"], {NAMESPACE_NAME_LABEL: peer.namespace}):
            return False
    elif peer.namespace != policy_namespace:
        return False
    return label_selector_matches(rule_peer.get("podSelector"), dict(peer.labels))


def _port_matches(rule_ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    """NetworkPolicyPort: absent or empty ports allow every port; protocol defaults to TCP."""
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        low = entry["port"]
        if isinstance(low, int) and low <= port <= entry.get("endPort", low):
            return True
    return False


def network_policy_allows(
    policies: list[dict[str, Any]],
    pod_labels: dict[str, str],
    namespace: str,
    direction: str,
    peer: Peer,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Whether a connection to (``Ingress``) or from (``Egress``) a pod with ``pod_labels`` in
    ``namespace`` on ``port`` is allowed by ``policies`` (Kubernetes NetworkPolicy semantics, k8s.io/api
    networking/v1/types.go): a pod no policy selects for that direction is not isolated; a selected one
    accepts exactly what some rule of some selecting policy allows (rules and policies are ORed)."""
    isolating = []
    for policy in policies:
        spec = policy["spec"]
        if policy["metadata"].get("namespace", namespace) != namespace:
            continue
        if not label_selector_matches(spec.get("podSelector"), pod_labels):
            continue
        types = spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])]
        if direction in types:
            isolating.append(spec)
    if not isolating:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for spec in isolating:
        for rule in spec.get(key) or []:
            if not _port_matches(rule.get("ports"), port, protocol):
                continue
            peers = rule.get(peers_key)
            if not peers or any(_peer_matches(p, namespace, peer) for p in peers):
                return True
    return False


# ---------------------------------------------------------------- KServe canary (0.20+) -----------------

# kserve/kserve pkg/apis/serving/v1beta1/inference_service_validation.go, validateCanarySpecs: the fields a
# canary's predictor must not set ("canary uses fixed replicas"; workerSpec: no multi-node canary).
CANARY_FORBIDDEN_FIELDS = ("workerSpec", "maxReplicas", "scaleTarget", "scaleMetric", "autoScaling")
# The predictor implementations validateExactlyOneImplementation counts (predictor.go, GetImplementations:
# the framework specs, model, and the CustomPredictor's containers).
PREDICTOR_IMPLEMENTATIONS = (
    "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml", "lightgbm",
    "paddle", "model", "containers",
)  # fmt: skip


def custom_storage_uri(predictor: dict[str, Any]) -> str | None:
    """``CustomPredictor.GetStorageUri`` (predictor_custom.go): the STORAGE_URI env of kserve-container."""
    for container in predictor.get("containers") or []:
        if container.get("name") == "kserve-container":
            for env in container.get("env") or []:
                if env.get("name") == "STORAGE_URI":
                    return env.get("value")
            return None
    return None


def kserve_validate_canary(isvc: dict[str, Any], platform: Platform) -> list[str]:
    """``validateCanarySpecs`` (kserve/kserve pkg/apis/serving/v1beta1/inference_service_validation.go,
    0.20+): Standard mode only; the stable predictor has a model; every canary has a unique
    ``predictor.name`` other than the stable one, 0 <= trafficPercent <= 100 (sum <= 100), exactly one
    implementation, a valid ComponentExtensionSpec, none of :data:`CANARY_FORBIDDEN_FIELDS` and
    minReplicas at most the stable predictor's. v0.14.0's CRD has no ``spec.canary``: the API server
    prunes it and no canary runs."""
    canaries = isvc.get("spec", {}).get("canary") or []
    if not canaries:
        return []
    if platform.kserve == KSERVE_V0_14:
        return ["kserve v0.14.0 canary: spec.canary is not in its CRD (pruned: no canary would run)"]
    errors = []
    if annotations_of(isvc).get("serving.kserve.io/deploymentMode") != "Standard":
        errors.append("kserve canary: canary is only supported in Standard deployment mode")
    stable = predictor_of(isvc)
    if custom_storage_uri(stable) is None and "model" not in stable:
        errors.append("kserve canary: canary requires a stable predictor with a model")
    names: set[str] = set()
    total = 0
    for i, canary in enumerate(canaries):
        predictor = canary.get("predictor") or {}
        name = predictor.get("name", "")
        if not name:
            errors.append(f"kserve canary[{i}]: predictor.name is required")
            continue
        if name in names:
            errors.append(f"kserve canary: predictor.name {name!r} is duplicated")
        names.add(name)
        if name == stable.get("name", ""):
            errors.append(f"kserve canary: predictor.name {name!r} conflicts with stable predictor name")
        percent = canary.get("trafficPercent", 0)
        if not 0 <= percent <= 100:
            errors.append(f"kserve canary {name!r}: trafficPercent must be between 0 and 100, got {percent}")
        total += percent
        implementations = [k for k in PREDICTOR_IMPLEMENTATIONS if predictor.get(k)]
        if len(implementations) != 1:
            errors.append(f"kserve canary {name!r} predictor: one implementation, got {implementations}")
        errors += [f"kserve canary {name!r}: {e}" for e in _validate_component_extension(predictor)]
        for key in CANARY_FORBIDDEN_FIELDS:
            if predictor.get(key):
                errors.append(f"kserve canary {name!r}: must not set {key}")
        if "minReplicas" in predictor and predictor["minReplicas"] > stable.get("minReplicas", 1):
            errors.append(
                f"kserve canary {name!r}: minReplicas ({predictor['minReplicas']}) must not exceed stable "
                f"predictor minReplicas ({stable.get('minReplicas', 1)})"
            )
    if total > 100:
        errors.append(f"kserve canary: sum of canary trafficPercent values ({total}) must be <= 100")
    return errors


def _mergo_override(dst: dict[str, Any], src: dict[str, Any]) -> None:
    """``mergo.Merge(&dst, src, mergo.WithOverride)`` on JSON objects: a non-empty ``src`` value replaces
    ``dst``'s (lists whole), objects merge key by key."""
    for key, value in src.items():
        if value in (None, "", 0, False, [], {}):
            continue
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _mergo_override(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)


def kserve_canary_predictors(isvc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The predictor each canary's Deployment is built from, by canary name: ``buildCanaryPredictor``
    (kserve/kserve pkg/controller/v1beta1/inferenceservice/components/predictor.go): the stable predictor
    with the canary's non-empty fields laid over it (mergo WithOverride), no autoscaling fields, and
    ``minReplicas`` from ``canaryReplicaCount`` (the canary's own, else ceil(stable * percent / 100))."""
    stable = predictor_of(isvc)
    out = {}
    for canary in isvc.get("spec", {}).get("canary") or []:
        predictor = copy.deepcopy(stable)
        _mergo_override(predictor, canary["predictor"])
        for key in ("maxReplicas", "scaleTarget", "scaleMetric", "autoScaling"):
            predictor.pop(key, None)
        replicas = canary["predictor"].get("minReplicas")
        if replicas is None:
            percent = Fraction(canary.get("trafficPercent", 0), 100)
            replicas = -(-stable.get("minReplicas", 1) * percent // 1)
        predictor["minReplicas"] = int(replicas)
        out[canary["predictor"]["name"]] = predictor
    return out


# ---------------------------------------------------------------- all of it -----------------------------


def admit(isvc: dict[str, Any], platform: Platform) -> list[str]:
    """Every problem the platform's admission chain finds with ``isvc`` (empty: admitted)."""
    defaulted = kserve_default(isvc, platform)
    errors = kserve_validate(defaulted, platform)
    pod_spec = pod_spec_of(defaulted)
    if deployment_mode(defaulted) == "Knative":
        errors += knative_validate(pod_spec, platform.knative_features)
        errors += knative_validate_revision(predictor_of(defaulted))
    for container in pod_spec.get("containers", []):
        errors += kubernetes_validate_resources(container)
    errors += kserve_validate_canary(defaulted, platform)
    if platform.kserve != KSERVE_V0_14:
        for name, canary in kserve_canary_predictors(defaulted).items():
            canary_pod = {k: v for k, v in canary.items() if k not in COMPONENT_EXTENSION_FIELDS}
            for container in canary_pod.get("containers", []):
                errors += [f"canary {name!r}: {e}" for e in kubernetes_validate_resources(container)]
    return errors
