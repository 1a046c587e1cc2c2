"""bench/served_ab.py's parsing and table (no server: the served cells are bench/served.py's, smoke-tested
in test_bench_smoke)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import served_ab


def test_variants_parse_in_order_and_need_two():
    text = "a=--x 1; b=@/tmp/t --y 2 ;"
    assert served_ab.parse_variants(text) == {"a": "--x 1", "b": "@/tmp/t --y 2"}
    with pytest.raises(SystemExit, match="at least two"):
        served_ab.parse_variants("a=--x 1")


def test_a_variant_may_name_another_checkout(tmp_path):
    assert served_ab.split_tree("--x 1") == (None, "--x 1")
    assert served_ab.split_tree(f"@{tmp_path} --x 1 --y") == (str(tmp_path.resolve()), "--x 1 --y")
    assert served_ab.split_tree(f"@{tmp_path}") == (str(tmp_path.resolve()), "")


def test_in_tree_runs_servers_from_the_checkout_and_restores(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/before")
    cwd = os.getcwd()
    with served_ab.in_tree(str(tmp_path)):
        assert Path(os.getcwd()) == tmp_path.resolve() and os.environ["PYTHONPATH"] == str(tmp_path)
    assert os.getcwd() == cwd and os.environ["PYTHONPATH"] == "/before"
    with served_ab.in_tree(None):
        assert os.getcwd() == cwd


def test_the_table_gives_medians_per_round_ratios_and_served_over_ceiling():
    data = {
        "variants": {"a": "", "b": "--x"},
        "cells": {
            "demo|v1|16": {
                "images_per_s": {"a": [50.0, 60.0], "b": [75.0, 66.0]},
                "ceiling_images_per_s": 110.0,
            },
            "demo|grpc|16": {"images_per_s": {"a": [40.0], "b": [44.0]}},
        },
    }
    lines = served_ab.markdown(data).splitlines()
    assert lines[2] == "| demo | v1 | 16 | 50.0 60.0 | 75.0 66.0 | 55.0 | 70.5 | 1.50/1.10 | 0.50 | 0.64 |"
    assert lines[3] == "| demo | grpc | 16 | 40.0 | 44.0 | 40.0 | 44.0 | 1.10 | - | - |"


def test_the_thread_table_gives_medians_per_variant_and_cell():
    def row(decode: float, cores: float) -> dict:
        ms = {"event loop": 1.0, "decode": decode, "model call": 0.5, "TensorFlow": 0.5, "gRPC I/O": 0.0,
              "other": 12.0}  # fmt: skip
        return {"protocol": "v1", "concurrency": 16, "server_cores_used": cores,
                "threads": {"cpu_ms_per_image": ms}}  # fmt: skip

    data = {
        "variants": {"base": "", "new": "--x"},
        "runs": [  # round 2 ran new first: the table still lists base first
            {"round": 0, "variant": "base", "model": "demo", "rows": [row(6.0, 1.5)]},
            {"round": 0, "variant": "new", "model": "demo", "rows": [row(4.0, 1.8)]},
            {"round": 1, "variant": "new", "model": "demo", "rows": [row(5.0, 1.6)]},
            {"round": 1, "variant": "base", "model": "demo", "rows": [row(7.0, 1.7), {"protocol": "v2"}]},
            {"round": 2, "variant": "base", "model": "demo", "rows": [row(10.0, 1.9)]},
        ],
    }
    lines = served_ab.threads_markdown(data).splitlines()
    assert len(lines) == 4
    assert lines[2] == "| demo | v1 | 16 | base | 1 | 7 | 0.5 | 0.5 | 0 | 12.0 | 21.0 | 1.7 |"
    assert lines[3] == "| demo | v1 | 16 | new | 1 | 4.5 | 0.5 | 0.5 | 0 | 12.0 | 18.5 | 1.7 |"
    assert served_ab.threads_markdown({"variants": {"a": ""}, "runs": []}) == ""
