"""The headline ratios of ``bench.run_all`` from hand-made stage results (numbers computed by hand)."""

from __future__ import annotations

import pytest

from bench.run_all import compute_ratios, ratios_markdown, readme_markdown, served_ceiling, served_over_raw

RAW = {
    "machine": {"affinity": 2, "cpu_count": 8},
    "models": {
        "demo": {
            "detector": [
                {"batch": 1, "images_per_s": 50.0, "process_cores_used": 1.0, "latency_ms_median": 20.0},
                {"batch": 8, "images_per_s": 100.0, "process_cores_used": 2.0, "latency_ms_median": 80.0},
                {"batch": 16, "images_per_s": 114.0, "process_cores_used": 1.9, "latency_ms_median": 140.0},
            ],
            "decode_resize_ms": {"500x375": 2.0, "1280x720": 6.0},
        }
    },
}
SERVED = {
    "models": {
        "demo": {
            "rows": [
                {"protocol": p, "concurrency": c, "images_per_s": v, "p50_ms": 30.0}
                for p, scale in (("v1", 1.0), ("grpc", 0.5))
                for c, v in ((1, 30.0 * scale), (4, 60.0 * scale), (8, 80.0 * scale), (16, 91.2 * scale))
            ]
        }
    }
}


def test_served_over_raw_at_each_concurrency_from_8():
    r = served_over_raw(RAW["models"]["demo"], SERVED["models"]["demo"])
    assert (r["concurrency"], r["raw_batch"]) == (16, 16)
    assert r["by_protocol"] == pytest.approx({"v1": 0.8, "grpc": 0.4})  # 91.2 / 114
    assert set(r["by_concurrency"]) == {8, 16}  # 1 and 4 are not reported
    assert r["by_concurrency"][8]["raw_batch"] == 8
    assert r["by_concurrency"][8]["by_protocol"] == pytest.approx({"v1": 0.8, "grpc": 0.4})  # 80 / 100


def test_the_ceiling_counts_only_the_model_and_the_decode():
    c = served_ceiling(RAW["models"]["demo"], 16, cores=2)
    # batch 16: 1.9 cores at 114 images/s = 16.67 CPU ms per image; decode + resize (2 + 6) / 2 = 4 ms;
    # 2 cores / 20.67 ms = 96.77 images/s, over 114
    assert c["model_cpu_ms_per_image"] == pytest.approx(1000 * 1.9 / 114)
    assert c["decode_resize_ms_per_image"] == 4.0
    assert c["ceiling"] == pytest.approx(2000 / (1000 * 1.9 / 114 + 4) / 114)
    assert c["ceiling"] == pytest.approx(0.8489, abs=1e-4)
    assert served_ceiling({**RAW["models"]["demo"], "decode_resize_ms": {}}, 16, 2) == {}


def test_compute_ratios_uses_the_cores_the_raw_stage_had():
    r = compute_ratios(RAW, None, SERVED)["demo"]
    assert r["served_over_raw_ceiling"]["cores"] == 2  # the affinity, not the 8 CPUs of the host
    table = ratios_markdown({"ratios": {"demo": r}})
    assert "| demo | served c=8 / raw run_batch b=8 | v1: 0.80, grpc: 0.40 |" in table
    assert "| demo | served c=16 / raw run_batch b=16 | v1: 0.80, grpc: 0.40 |" in table
    assert (
        "| demo | ceiling of served / raw b=16 on 2 cores (model + decode/resize CPU only) | "
        "0.85 (16.7 + 4.0 CPU ms per image) |"
    ) in table


def test_served_over_the_ceiling_and_the_readme_summary():
    """Ceiling 2000 / (16.67 + 4) = 96.77 images/s: v1 91.2 / 96.77 = 0.94, grpc 45.6 / 96.77 = 0.47."""
    r = compute_ratios(RAW, None, SERVED)
    assert r["demo"]["served_over_raw_ceiling"]["images_per_s"] == pytest.approx(
        2000 / (1000 * 1.9 / 114 + 4)
    )
    assert r["demo"]["served_over_ceiling"] == pytest.approx({"v1": 0.9425, "grpc": 0.4712}, abs=1e-4)
    assert "| demo | served c=16 / that ceiling | v1: 0.94, grpc: 0.47 |" in ratios_markdown({"ratios": r})
    raw = {**RAW, "models": {"demo": {**RAW["models"]["demo"], "network": [
        {"batch": 1, "images_per_s": 62.5}, {"batch": 8, "images_per_s": 125.0},
        {"batch": 16, "images_per_s": 120.0},
    ]}}}  # fmt: skip
    post = {"models": {"demo": {"rows": [{"batch": 8, "ms_per_image": {
        "post:top400": {"min": 3.0}, "whole:top400": {"min": 12.0},
        "post:sized": {"min": 0.5}, "whole:sized": {"min": 10.0},
    }}]}}}  # fmt: skip
    table = readme_markdown({"raw": raw, "served": SERVED, "ratios": r, "postprocess": None})
    assert table.splitlines() == [
        "|  | demo model |",
        "|---|---|",
        "| served img/s, v1, 16 clients | 91.2 |",
        "| served img/s, grpc, 16 clients | 45.6 |",
        "| raw `run_batch` img/s, batch 16 | 114 |",
        "| ceiling: cores / (model + decode CPU per image) | 96.8 (0.85 x raw) |",
        "| served / ceiling (v1 / grpc) | 0.94 / 0.47 |",
        "| post-processing share of the call, by batch | no `make bench-postprocess` results in the output "
        "folder |",
    ]
    table = readme_markdown({"raw": raw, "served": SERVED, "ratios": r, "postprocess": post})
    assert table.splitlines()[-1] == (
        "| post-processing share of the call, by batch | b8 25% -> b8 5% (`make bench-postprocess`) |"
    )
