"""``argparse`` value types shared by the server's flags, the ``ssd-detect`` command line and the tools.

Each takes the flag's text and returns the value, or raises ``argparse.ArgumentTypeError`` naming the
rule (argparse prefixes the flag: ``argument --batch-size: must be a positive integer, got 0``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def positive_int(raw: str) -> int:
    """An integer ``>= 1``."""
    value = int(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {raw}")
    return value


def fraction(raw: str) -> float:
    """A number within ``[0, 1]`` (a score or an IoU)."""
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {raw}")
    return value


def int_list(least: int) -> Callable[[str], list[int]]:
    """A type for comma-separated integers, each ``>= least`` (``1,2,4``)."""

    def parse(raw: str) -> list[int]:
        try:
            values = [int(t) for t in raw.split(",") if t.strip()]
        except ValueError:
            values = []
        if not values or min(values) < least:
            raise argparse.ArgumentTypeError(f"must be integers >= {least} like 1,2,4, got {raw!r}")
        return values

    return parse


def positive_floats(raw: str) -> list[float]:
    """Comma-separated numbers, each ``> 0`` (``8,16,32``)."""
    try:
        values = [float(t) for t in raw.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0 or not all(v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"must be positive numbers like 8,16,32, got {raw!r}")
    return values


positive_ints = int_list(1)
# minReplicas candidates: the chart's range (values.schema.json: minimum 0, 0 scales to zero)
replica_floors = int_list(0)
