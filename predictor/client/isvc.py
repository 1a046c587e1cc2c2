"""The URL of a KServe InferenceService, read with the Kubernetes API through a kube config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from predictor.client.errors import ClientError

ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


def isvc_url(isvc: Mapping[str, Any]) -> str:
    """``status.url`` of an InferenceService object, once its ``Ready`` condition is ``True``.

    Raises:
      ClientError: not Ready (with the condition's reason and message) or no URL yet.
    """
    meta = isvc.get("metadata") or {}
    name = f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"
    status = isvc.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or str(ready.get("status")) != "True":
        why = (
            "no Ready condition yet"
            if ready is None
            else (
                f"Ready={ready.get('status')}"
                + "".join(f", {k}: {ready[k]}" for k in ("reason", "message") if ready.get(k))
            )
        )
        raise ClientError(f"InferenceService {name} is not Ready ({why})")
    url = status.get("url")
    if not url:
        raise ClientError(f"InferenceService {name} is Ready but has no status.url")
    return str(url)


def kube_api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A Kubernetes ``ApiClient`` from the kube config (``--kubeconfig``, ``$KUBECONFIG``,
    ``~/.kube/config``), or the in-cluster service account when there is none."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, FileNotFoundError) as kube_error:
        if kubeconfig or context:
            raise ClientError(f"cannot load the kube config: {kube_error}") from None
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as e:
            raise ClientError(f"no kube config ({kube_error}) and not in a cluster ({e})") from None
        return client.ApiClient(configuration)


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kube config's current (or named) context, else the pod's, else ``default``."""
    from kubernetes import config

    try:
        contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
        namespace = ((chosen or {}).get("context") or {}).get("namespace")
        if namespace:
            return str(namespace)
    except Exception:  # no kube config: look for the in-cluster namespace
        pass
    pod_ns = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return pod_ns.read_text().strip() if pod_ns.is_file() else "default"


def resolve_isvc_url(
    name: str,
    namespace: str | None = None,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    timeout: float | None = 30.0,
) -> str:
    """Read InferenceService ``namespace/name`` (serving.kserve.io/v1beta1) and return its URL."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    namespace = namespace or default_namespace(kubeconfig, context)
    api = kube_api_client(kubeconfig, context)
    try:
        isvc = client.CustomObjectsApi(api).get_namespaced_custom_object(
            ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, name, _request_timeout=timeout
        )
    except ApiException as e:
        what = "not found" if e.status == 404 else f"HTTP {e.status} {e.reason}"
        raise ClientError(f"InferenceService {namespace}/{name}: {what}") from None
    except Exception as e:  # urllib3 connection errors and the like
        raise ClientError(f"cannot read InferenceService {namespace}/{name}: {e}") from None
    finally:
        api.close()
    return isvc_url(isvc)
