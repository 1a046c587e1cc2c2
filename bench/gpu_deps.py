"""Make the Keras wheel and its pure-Python dependencies importable on a machine without a registry.

Standard library only, so it runs on any Python 3 before anything else is importable. For every
distribution in ``--wheels`` whose top-level module is missing (``keras`` is always taken from the
wheels, in the version the project pins) it unzips the wheel that fits this interpreter into ``--target``,
which the caller puts first on ``PYTHONPATH``. Prints one line per distribution and exits non-zero when a
needed module is still missing, naming it.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import zipfile
from pathlib import Path

#: distribution (normalised wheel prefix) -> top-level module, in install order.
DISTRIBUTIONS: dict[str, str] = {
    "typing_extensions": "typing_extensions",
    "packaging": "packaging",
    "absl_py": "absl",
    "namex": "namex",
    "mdurl": "mdurl",
    "markdown_it_py": "markdown_it",
    "pygments": "pygments",
    "rich": "rich",
    "optree": "optree",
    "keras": "keras",
    # GPU JPEG decode (bench/gpu_decode.py): optional, the check goes on without them.
    "nvidia_nvjpeg_cu12": "nvidia.nvjpeg",
    "nvidia_nvimgcodec_cu12": "nvidia.nvimgcodec",
}
ALWAYS_FROM_WHEELS = {"keras"}
OPTIONAL = {"nvidia_nvjpeg_cu12", "nvidia_nvimgcodec_cu12"}


def wheel_fits(name: str) -> bool:
    """Whether a wheel file name's tags fit this interpreter: pure ``py3-none-any``, ``cpXY`` + machine, or
    ``py3-none`` + machine (libraries that bundle one extension per Python, like nvImageCodec)."""
    parts = name[: -len(".whl")].split("-")
    if len(parts) < 5:
        return False
    py_tag, abi_tag, plat_tag = parts[-3], parts[-2], parts[-1]
    py3 = any(t.startswith("py3") for t in py_tag.split("."))
    if abi_tag == "none" and plat_tag == "any":
        return py3
    machine = platform.machine()
    on_this_machine = plat_tag.endswith(machine) and "linux" in plat_tag
    if abi_tag == "none" and py3:
        return on_this_machine
    cp = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return cp in py_tag.split(".") and abi_tag == cp and on_this_machine


def importable(module: str) -> bool:
    """Whether ``module`` (dotted names too) can be found, its parent package missing counting as no."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def find_wheel(wheels: Path, dist: str) -> Path | None:
    """The first wheel of ``dist`` in ``wheels`` that fits this interpreter."""
    for path in sorted(wheels.glob(f"{dist}-*.whl")):
        if wheel_fits(path.name):
            return path
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=Path(__file__).resolve().parent / ".wheels")
    parser.add_argument("--target", type=Path, required=True)
    args = parser.parse_args(argv)
    args.target.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(args.target))
    print(f"python {platform.python_version()} on {platform.machine()}; wheels from {args.wheels}")
    missing = []
    for dist, module in DISTRIBUTIONS.items():
        present = importable(module)
        if present and dist not in ALWAYS_FROM_WHEELS:
            print(f"  {dist:18s} present on the machine")
            continue
        wheel = find_wheel(args.wheels, dist)
        if wheel is None:
            print(
                f"  {dist:18s} NO FITTING WHEEL in {args.wheels}"
                + (" (machine copy used)" if present else "")
                + (
                    " (optional: its part of the check is skipped)"
                    if dist in OPTIONAL and not present
                    else ""
                )
            )
            if not present and dist not in OPTIONAL:
                missing.append(module)
            continue
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(args.target)
        print(f"  {dist:18s} unpacked {wheel.name}")
    importlib.invalidate_caches()
    still = [m for m in missing if not importable(m)]
    if still:
        print(f"MISSING modules: {', '.join(still)} (add their wheels with `make gpu-check-prepare`)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
