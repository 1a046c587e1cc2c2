"""The pod contract, run: the chart's predictor container started the way the kubelet starts the image.

No container engine runs here, so the image is never built; what a pod would do with it is replayed
under bubblewrap (``bwrap``, Debian package ``bubblewrap``) from two sources read at test time:

- the **Dockerfile**: the runtime stage's ENTRYPOINT, ENV (through its parent stages), WORKDIR and USER;
- the **rendered chart**: for each value set whose predictor container can run on a CPU (it requests no
  GPU), plus the first of them with ``model.storageUri`` set, the InferenceService's
  ``kserve-container``: args, env, securityContext (runAsUser/runAsGroup, readOnlyRootFilesystem),
  volumeMounts of emptyDir volumes, the three probes, and the pod's termination grace period. Value
  sets rendering the same contract run once.

The sandbox: a read-only root (the host's directories, bound read-only; this test's virtual
environment stands in for the image's ``/opt/venv`` and is bound there), each emptyDir a tmpfs of its
sizeLimit, ``/mnt/models`` read-only when ``storageUri`` is set (KServe's storage initializer puts the
model there; the demo model stands in), the runAsUser uid and gid (a user namespace), no capabilities,
``no_new_privs``, a PID namespace with the ENTRYPOINT as PID 1, its own network namespace, and a clean
environment: the Dockerfile's ENV, then the container's env, plus ``PYTHONPATH`` pointing at this
checkout (the stand-in for the app wheel in site-packages).

Probes reach the server through a Unix-socket relay started beside it in the sandbox (tests/pod_relay.py):
the network namespace has no route from the test process. The kubelet's probe rules are followed:
an attempt every ``periodSeconds``, ``timeoutSeconds`` each, success on 200-399, the startup budget is
``failureThreshold`` attempts (Kubernetes ``pkg/kubelet/prober/worker.go``). SIGTERM goes to PID 1, which
must exit 0 within the pod's grace period (Standard mode: terminationGracePeriodSeconds; Knative mode:
the revision timeout, knative/serving ``pkg/reconciler/revision/resources/deploy.go``).

Not emulated: seccomp profiles, cgroup limits (resources), the image's own files (the base image's
``/etc``, ``/usr``: the host's stand in), and the file-permission checks of a real uid 1000 (the user
namespace maps it to the invoking user).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import k8s_admission_rules as rules
import numpy as np
import pytest
import yaml
from pinned_tools import pinned_helm
from serving_fixtures import b64, encode_image

from predictor.ssd.weights import model_version

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "ssd-detector"
DOCKERFILE = REPO / "Dockerfile"
RELAY = Path(__file__).resolve().parent / "pod_relay.py"
RELEASE, NAMESPACE = "contract", "vision"
# Docker's PATH for an image that sets none (the base images' own ENV is not known without pulling).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The image's virtual environment (Dockerfile: python3 -m venv /opt/venv): this test's venv stands in.
IMAGE_VENV = "/opt/venv"
# KServe's storage initializer: the model of storageUri, mounted read-only into kserve-container.
MODEL_MOUNT = "/mnt/models"
# Where the relay's socket lives inside the sandbox (a host directory bound read-write).
RELAY_DIR = "/run/pod-contract"
KNATIVE_DEFAULT_REVISION_TIMEOUT = 300  # knative/serving config-defaults revision-timeout-seconds
KUBERNETES_DEFAULT_GRACE = 30
# Host directories the sandbox never sees as they are (replaced by the pod's own view or not needed).
NOT_FROM_HOST = {"proc", "dev", "sys", "tmp", "run", "mnt", "opt", "media", "lost+found", "boot"}

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap needs Linux namespaces")


# ---------------------------------------------------------------- the Dockerfile's runtime contract


def _instructions(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full, pending = (pending + line).strip(), ""
        if full:
            keyword, _, rest = full.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


@dataclass
class ImageConfig:
    """What the runtime stage of the Dockerfile gives a container, for one build VARIANT."""

    entrypoint: list[str]
    env: dict[str, str]
    workdir: str
    user: str


def image_config(variant: str) -> ImageConfig:
    """Follow ``FROM <stage>`` from the last stage back to the base image, collecting ENV in order."""
    instructions = _instructions(DOCKERFILE.read_text())
    args = {"VARIANT": variant}
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] = []
    last = ""
    for keyword, rest in instructions:
        if keyword == "FROM":
            match = re.match(r"(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert match, f"unnamed stage: FROM {rest}"
            parent = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], ""), match[1])
            current = []
            stages[match[2]] = (parent, current)
            last = match[2]
        elif stages:
            current.append((keyword, rest))
    chain = []
    stage: str | None = last
    while stage in stages:
        chain.append(stage)
        stage = stages[stage][0]
    env = {"PATH": DEFAULT_PATH}
    config = ImageConfig(entrypoint=[], env=env, workdir="/", user="0")
    for name in reversed(chain):
        for keyword, rest in stages[name][1]:
            if keyword == "ENV":
                for item in shlex.split(rest):
                    key, _, value = item.partition("=")
                    env[key] = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m[1] or m[2], ""), value)
            elif keyword == "ENTRYPOINT":
                config.entrypoint = json.loads(rest)
            elif keyword == "WORKDIR":
                config.workdir = rest
            elif keyword == "USER":
                config.user = rest
    assert config.entrypoint, "the runtime stage has no ENTRYPOINT (exec form)"
    return config


# ---------------------------------------------------------------- the chart's container contract


@dataclass
class Probe:
    path: str
    port: int
    period_s: int
    timeout_s: int
    failure_threshold: int
    initial_delay_s: int


@dataclass
class PodContract:
    """What the rendered InferenceService asks of the predictor container."""

    value_set: str
    image: str
    args: list[str]
    env: dict[str, str]
    uid: int
    gid: int
    read_only_root: bool
    tmpfs: dict[str, int | None]  # mountPath -> size in bytes (None: no limit)
    model_mount: bool
    probes: dict[str, Probe]
    grace_s: int
    gpu_request: bool
    cap_drop: list[str] = field(default_factory=list)  # securityContext.capabilities.drop, as written
    cap_add: list[str] = field(default_factory=list)
    no_new_privs: bool = False  # allowPrivilegeEscalation: false (Kubernetes' default is true)
    privileged: bool = False
    mounts_left: list[str] = field(default_factory=list)


def render_isvc(*helm_args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [pinned_helm(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *helm_args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    isvcs = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "InferenceService"]
    assert len(isvcs) == 1
    return isvcs[0]


def _size_bytes(quantity: str | None) -> int | None:
    if not quantity:
        return None
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", str(quantity))
    assert match and (not match[2] or match[2] in units), f"unsupported quantity {quantity!r}"
    return int(match[1]) * units.get(match[2], 1)


def _probe(container: dict[str, Any], kind: str) -> Probe:
    spec = container[f"{kind}Probe"]
    get = spec["httpGet"]
    port = get["port"]
    if isinstance(port, str):  # a named port
        port = next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
    # Kubernetes' defaults (core/v1 Probe): period 10, timeout 1, failureThreshold 3, initialDelay 0.
    return Probe(
        path=get.get("path", "/"),
        port=int(port),
        period_s=int(spec.get("periodSeconds", 10)),
        timeout_s=int(spec.get("timeoutSeconds", 1)),
        failure_threshold=int(spec.get("failureThreshold", 3)),
        initial_delay_s=int(spec.get("initialDelaySeconds", 0)),
    )


def pod_contract(value_set: str, isvc: dict[str, Any]) -> PodContract:
    predictor = isvc["spec"]["predictor"]
    (container,) = [c for c in predictor["containers"] if c["name"] == "kserve-container"]
    env = {}
    for item in container.get("env", []):
        assert "value" in item, f"env {item['name']}: valueFrom is not emulated by this test"
        env[item["name"]] = str(item["value"])
    pod_security = predictor.get("securityContext", {})
    security = container.get("securityContext", {})
    volumes = {v["name"]: v for v in predictor.get("volumes", [])}
    tmpfs, left = {}, []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            tmpfs[mount["mountPath"]] = _size_bytes((volume["emptyDir"] or {}).get("sizeLimit"))
        else:
            left.append(f"{mount['name']} at {mount['mountPath']}")
    if isvc["metadata"]["annotations"].get("serving.kserve.io/deploymentMode") == "Standard":
        grace = int(predictor.get("terminationGracePeriodSeconds", KUBERNETES_DEFAULT_GRACE))
    else:  # Knative sets the pod's grace period to the revision timeout
        grace = int(predictor.get("timeout") or KNATIVE_DEFAULT_REVISION_TIMEOUT)
    limits = (container.get("resources") or {}).get("limits") or {}
    return PodContract(
        value_set=value_set,
        image=container["image"],
        args=[str(a) for a in container.get("args", [])],
        env=env,
        uid=int(security.get("runAsUser", pod_security.get("runAsUser", -1))),
        gid=int(security.get("runAsGroup", pod_security.get("runAsGroup", -1))),
        read_only_root=bool(security.get("readOnlyRootFilesystem", False)),
        tmpfs=tmpfs,
        model_mount=bool(predictor.get("storageUri") or env.get("STORAGE_URI")),
        probes={kind: _probe(container, kind) for kind in ("startup", "readiness", "liveness")},
        grace_s=grace,
        gpu_request=any(re.search(r"gpu", name) for name in limits),
        cap_drop=[str(c) for c in (security.get("capabilities") or {}).get("drop") or []],
        cap_add=[str(c) for c in (security.get("capabilities") or {}).get("add") or []],
        no_new_privs=security.get("allowPrivilegeEscalation") is False,
        privileged=bool(security.get("privileged", False)),
        mounts_left=left,
    )


#: Linux capability numbers (include/uapi/linux/capability.h), for the bits of /proc/<pid>/status.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip
#: What containerd and CRI-O give a container that drops nothing (containerd pkg/oci/spec.go
#: defaultUnixCaps): the starting set when the chart does not drop ALL.
RUNTIME_DEFAULT_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP",
    "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)  # fmt: skip


def effective_capabilities(contract: PodContract) -> list[str]:
    """The capabilities the chart's securityContext gives the container (names without ``CAP_``)."""
    if contract.privileged:
        return list(CAPABILITIES)
    names = {c.upper().removeprefix("CAP_") for c in contract.cap_drop}
    start = set() if "ALL" in names else set(RUNTIME_DEFAULT_CAPABILITIES) - names
    add = {c.upper().removeprefix("CAP_") for c in contract.cap_add}
    return sorted(start | add, key=CAPABILITIES.index)


def capability_names(mask: int) -> list[str]:
    return [name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1]


def value_sets() -> dict[str, list[str]]:
    """name -> helm arguments: values.yaml alone and with each ci/*-values.yaml."""
    sets = {"default": []}
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        sets[path.name.removesuffix("-values.yaml")] = ["-f", str(path)]
    return sets


def canary_cases() -> list[str]:
    """``<value set>:canary``: the canary pod of each Standard-mode set with a canary (spec.canary, whose
    pod KServe builds from the stable predictor and the canary's fields: ``rules.kserve_canary_predictors``).
    A Knative canary is the predictor itself, run as its own value set."""
    cases = []
    for name, helm_args in value_sets().items():
        values = yaml.safe_load(Path(helm_args[1]).read_text()) if helm_args else {}
        if values.get("canary", {}).get("enabled") and values.get("deploymentMode") == "Standard":
            cases.append(f"{name}:canary")
    return cases


def canary_contract(name: str, isvc: dict[str, Any]) -> PodContract:
    """The contract of the (one) canary's pod of a rendered InferenceService."""
    defaulted = rules.kserve_default(isvc, rules.Platform())
    ((canary_name, predictor),) = rules.kserve_canary_predictors(defaulted).items()
    canary_isvc = {**defaulted, "spec": {**defaulted["spec"], "predictor": predictor}}
    return pod_contract(f"{name}:canary-{canary_name}", canary_isvc)


# A case beyond the chart's own value sets: the first CPU set with a model from storage, so that the
# /mnt/models mount is part of the contract even while no CPU set of the chart names a storageUri.
WITH_STORAGE = "first-cpu-set+storageUri"
_contracts: dict[str, PodContract] = {}


def contract_of(case: str) -> PodContract:
    """The rendered contract of a case; skips GPU containers and contracts already run by another case."""
    if not _contracts:
        for name, helm_args in value_sets().items():
            isvc = render_isvc(*helm_args)
            _contracts[name] = pod_contract(name, isvc)
            if isvc["spec"].get("canary"):
                _contracts[f"{name}:canary"] = canary_contract(name, isvc)
        cpu = [name for name, c in _contracts.items() if not c.gpu_request]
        assert cpu, "no value set of the chart runs on a CPU (gpu.enabled: false)"
        storage = ["--set", "model.storageUri=pvc://contract-models/demo"]
        _contracts[WITH_STORAGE] = pod_contract(
            f"{cpu[0]}+storageUri", render_isvc(*value_sets()[cpu[0]], *storage)
        )
    contract = _contracts[case]
    if not _runs(case, contract):
        pytest.skip(f"{case}: the container requests a GPU")
    key = _identity(contract)
    first = next(name for name, c in _contracts.items() if _runs(name, c) and _identity(c) == key)
    if first != case:
        pytest.skip(f"{case}: the same container contract as {first}")
    return contract


def _runs(case: str, contract: PodContract) -> bool:
    """CPU containers run; so does the default values' GPU container (what the first ``helm install``
    deploys): without a GPU, TensorFlow runs it on the CPU, and the rest of its contract is the same."""
    return not contract.gpu_request or case == "default"


def _identity(contract: PodContract) -> str:
    return json.dumps(
        {k: v for k, v in vars(contract).items() if k != "value_set"}, default=vars, sort_keys=True
    )


# ---------------------------------------------------------------- the sandbox


def bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        pytest.fail("bubblewrap is not installed: apt-get install -y bubblewrap (.ci/run installs it)")
    return path


def sandbox_command(
    contract: PodContract, image: ImageConfig, relay_dir: Path, command: list[str]
) -> list[str]:
    """The bwrap command line running ``command`` as the pod would run the container."""
    cmd = [bwrap(), "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    cmd += ["--die-with-parent", "--as-pid-1", "--new-session"]
    uid, gid = (int(x) for x in image.user.split(":")) if ":" in image.user else (int(image.user), 0)
    uid = contract.uid if contract.uid >= 0 else uid
    gid = contract.gid if contract.gid >= 0 else gid
    cmd += ["--uid", str(uid), "--gid", str(gid), "--hostname", "predictor"]
    for entry in sorted(os.listdir("/")):
        host = Path("/") / entry
        if entry in NOT_FROM_HOST:
            continue
        if host.is_symlink():
            cmd += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            cmd += ["--ro-bind", str(host), str(host)]
    cmd += ["--ro-bind", "/sys", "/sys", "--proc", "/proc", "--dev", "/dev"]
    cmd += ["--ro-bind", sys.prefix, IMAGE_VENV]
    for path, size in contract.tmpfs.items():
        cmd += (["--size", str(size)] if size else []) + ["--perms", "0777", "--tmpfs", path]
    if contract.model_mount:
        from predictor.models import DEMO_MODEL_DIR

        cmd += ["--ro-bind", str(DEMO_MODEL_DIR), MODEL_MOUNT]
    for needed in (REPO, Path(sys.prefix).resolve()):  # if they live under a directory replaced above
        if needed.parts[1] in NOT_FROM_HOST:
            cmd += ["--ro-bind", str(needed), str(needed)]
    cmd += ["--bind", str(relay_dir), RELAY_DIR]
    if contract.read_only_root:
        cmd += ["--remount-ro", "/"]
    # the capabilities the chart asks for (bwrap always sets no_new_privs: a chart allowing privilege
    # escalation asks for what this sandbox cannot give, and the contract test says so)
    cmd += ["--cap-drop", "ALL"] + [
        a for c in effective_capabilities(contract) for a in ("--cap-add", f"CAP_{c}")
    ]
    cmd += ["--chdir", image.workdir, "--clearenv"]
    for key, value in sandbox_env(contract, image).items():
        cmd += ["--setenv", key, value]
    return [*cmd, "--", *command]


def sandbox_env(contract: PodContract, image: ImageConfig) -> dict[str, str]:
    """The Dockerfile's ENV, then the container's env; PYTHONPATH stands in for the app wheel."""
    env = {**image.env, **contract.env}
    env["PYTHONPATH"] = str(REPO)
    return env


def relay_wrapped(entrypoint: list[str], args: list[str], port: int) -> list[str]:
    """``sh`` starts the relay in the background, then execs the ENTRYPOINT (so it is PID 1)."""
    script = 'relay="$1"; sock="$2"; port="$3"; shift 3; python "$relay" "$sock" "$port" & exec "$@"'
    sock = f"{RELAY_DIR}/http.sock"
    return ["/bin/sh", "-c", script, "sh", str(RELAY), sock, str(port), *entrypoint, *args]


class Pod:
    """One sandboxed container: start, probe through the relay, SIGTERM."""

    def __init__(self, contract: PodContract, workdir: Path) -> None:
        self.contract = contract
        self.image = image_config("cpu" if contract.image.endswith("-cpu") else "gpu")
        self.relay_dir = workdir / "relay"
        self.relay_dir.mkdir()
        self.log_path = workdir / "pod.log"
        port = contract.probes["startup"].port
        command = relay_wrapped(self.image.entrypoint, contract.args, port)
        self.cmd = sandbox_command(contract, self.image, self.relay_dir, command)
        self.proc: subprocess.Popen | None = None
        self.pid1: int | None = None
        self.client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.relay_dir / "http.sock")),
            base_url=f"http://pod:{port}",
        )

    def start(self) -> None:
        info_r, info_w = os.pipe()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*self.cmd[:1], "--info-fd", str(info_w), *self.cmd[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(info_w,),
            )
        os.close(info_w)
        with os.fdopen(info_r) as info:
            text = info.read()
        assert text, f"bwrap did not start:\n{self.log()}"
        self.pid1 = json.loads(text)["child-pid"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def get(self, probe: Probe) -> int | None:
        """One probe attempt: the HTTP status, or None when no answer came within timeoutSeconds."""
        try:
            return self.client.get(probe.path, timeout=probe.timeout_s).status_code
        except httpx.HTTPError:
            return None

    def wait_started(self, probe: Probe) -> int:
        """The startup probe, kubelet style; returns the attempt that succeeded (1-based)."""
        time.sleep(probe.initial_delay_s)
        for attempt in range(1, probe.failure_threshold + 1):
            began = time.monotonic()
            status = self.get(probe)
            if status is not None and 200 <= status < 400:
                return attempt
            assert self.proc.poll() is None, (
                f"the container exited with {self.proc.returncode}:\n{self.log()}"
            )
            time.sleep(max(0.0, began + probe.period_s - time.monotonic()))
        pytest.fail(
            f"{probe.path} not ready within {probe.failure_threshold} startup probe attempts "
            f"(every {probe.period_s} s):\n{self.log()}"
        )

    def stop(self) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------- the tests


def inside(contract: PodContract, tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script in the contract's sandbox (no server)."""
    relay_dir = tmp_path / "relay"
    relay_dir.mkdir(exist_ok=True)
    image = image_config("cpu" if contract.image.endswith("-cpu") else "gpu")
    return subprocess.run(
        sandbox_command(contract, image, relay_dir, ["/bin/sh", "-c", script]),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_sandbox_enforces_what_the_pod_spec_says(tmp_path):
    """The sandbox checked from inside: uid/gid, PID 1, read-only root, writable emptyDirs, the model
    mount read-only, no capabilities and no privilege escalation, no network but loopback, exactly the
    environment the image and pod give."""
    contract = contract_of(WITH_STORAGE)
    image = image_config("cpu" if contract.image.endswith("-cpu") else "gpu")
    ids = inside(contract, tmp_path, "id -u; id -g; echo $$").stdout.split()
    assert ids == [str(contract.uid), str(contract.gid), "1"]
    assert contract.read_only_root
    assert inside(contract, tmp_path, "touch /written").returncode != 0, "the root must be read-only"
    for path in contract.tmpfs:
        assert inside(contract, tmp_path, f"touch {path}/written").returncode == 0, f"{path} must be writable"
    assert contract.model_mount
    models = inside(
        contract, tmp_path, f"test -f {MODEL_MOUNT}/model.yaml && ! touch {MODEL_MOUNT}/x 2>/dev/null"
    )
    assert models.returncode == 0, f"{MODEL_MOUNT} must hold the model, read-only"
    # What the rendered chart asks for, then what a process in the sandbox built from it really has.
    asked = (contract.cap_drop, contract.cap_add, contract.no_new_privs, contract.privileged)
    assert asked == (["ALL"], [], True, False), "capabilities: drop ALL, add none; no escalation"
    status = dict(
        line.split(":\t", 1)
        for line in inside(
            contract, tmp_path, "grep -E '^(Cap...|NoNewPrivs):' /proc/self/status"
        ).stdout.splitlines()
    )
    wanted = effective_capabilities(contract)
    for field_name in ("CapEff", "CapPrm", "CapBnd"):
        assert capability_names(int(status[field_name], 16)) == wanted, (field_name, status)
    assert status["NoNewPrivs"] == ("1" if contract.no_new_privs else "0"), status
    devices = inside(contract, tmp_path, "tail -n +3 /proc/net/dev | cut -d: -f1").stdout.split()
    assert devices == ["lo"], "the pod's own network namespace"
    env = inside(contract, tmp_path, "env -0").stdout.split("\0")
    seen = dict(item.split("=", 1) for item in env if item)
    assert {k: v for k, v in seen.items() if k not in ("PWD", "SHLVL", "_")} == sandbox_env(contract, image)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("case", [*value_sets(), *canary_cases(), WITH_STORAGE])
def test_container_serves_under_the_pod_contract(case, tmp_path, demo_model_dir):
    """Startup probe ready within its budget, readiness and liveness 200, a real prediction, /metrics,
    and exit 0 within the grace period after SIGTERM."""
    contract = contract_of(case)
    assert not contract.mounts_left, f"volumes this test does not emulate: {contract.mounts_left}"
    pod = Pod(contract, tmp_path)
    try:
        pod.start()
        pod.wait_started(contract.probes["startup"])
        for kind in ("readiness", "liveness"):
            probe = contract.probes[kind]
            assert pod.get(probe) == 200, f"{kind} probe {probe.path}"
        _check_prediction(pod, contract, demo_model_dir)
        metrics = pod.client.get("/metrics", timeout=10)
        assert metrics.status_code == 200
        assert 'ssd_requests_total{protocol="v1",status="200"}' in metrics.text
        version = model_version(demo_model_dir)  # the model mounted (or baked in), whatever the set
        assert f'ssd_model_info{{model="{contract_model(contract)}",version="{version}"}} 1.0' in metrics.text
        if contract.model_mount:
            whole_log = pod.log_path.read_text(errors="replace")  # pod.log() is its tail
            assert f"from {MODEL_MOUNT}" in whole_log, "the server did not load the model from the mount"
        os.kill(pod.pid1, signal.SIGTERM)
        try:
            code = pod.proc.wait(timeout=contract.grace_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"running {contract.grace_s} s after SIGTERM (the kubelet SIGKILLs):\n{pod.log()}")
        assert code == 0, f"exit status {code} after SIGTERM:\n{pod.log()}"
    finally:
        pod.stop()


def contract_model(contract: PodContract) -> str:
    """The model name the startup probe watches."""
    return re.fullmatch(r"/v2/models/([^/]+)/ready", contract.probes["startup"].path)[1]


def _check_prediction(pod: Pod, contract: PodContract, demo_model_dir: Path) -> None:
    """A real V1 request; the detections equal the model's own, with the thresholds the args set."""
    from predictor.datasets.shapes import EVAL_SEED, generate_sample
    from predictor.serving.options import build_parser
    from predictor.ssd.detector import Detector

    args = build_parser().parse_args(contract.args)
    name = re.fullmatch(r"/v2/models/([^/]+)/ready", contract.probes["startup"].path)[1]
    assert args.model_name == name, "the probes watch the model the server serves"
    image = generate_sample(EVAL_SEED, 0).image
    response = pod.client.post(
        f"/v1/models/{name}:predict", json={"instances": [{"b64": b64(encode_image(image))}]}, timeout=60
    )
    assert response.status_code == 200, response.text
    (predictions,) = response.json()["predictions"]
    expected = Detector.from_dir(
        str(demo_model_dir),
        score_threshold=args.score_threshold,
        nms_threshold=args.nms_threshold,
        top_k=args.top_k,
        max_detections=args.max_detections,
    ).detect([image])[0]
    assert len(predictions) == len(expected.scores) > 0
    assert [p["class_id"] for p in predictions] == expected.classes.tolist()
    np.testing.assert_allclose([p["score"] for p in predictions], expected.scores, atol=1e-3)
