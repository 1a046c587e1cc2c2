"""A short soak (``python -m bench.soak``) against the tiny random model: 300 mixed requests on loopback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from serving_fixtures import REPO_ROOT, server_env

from bench.soak import INVALID_KINDS

N_REQUESTS = 300
VALID_KINDS = {"v1_json", "v1_raw", "v1_large", "v2_rest", "grpc", "grpc_large", "burst"}


def test_short_soak(random_tiny_model_dir, tmp_path):
    out = tmp_path / "soak.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.soak",
        "--model_dir",
        str(random_tiny_model_dir),
        "--requests",
        str(N_REQUESTS),
        "--concurrency",
        "8",
        "--max_seconds",
        "1200",
        "--max_batch_size",
        "8",
        "--max_rss_growth_pct",
        "25",
        "--out",
        str(out),
    ]
    # The time cap and the timeout only guard against a hang: every request must be sent, however slow
    # the machine.
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=server_env(), capture_output=True, text=True, timeout=1500)
    assert out.exists(), proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| requests served | 300 |" in proc.stdout

    assert report["requests"] == N_REQUESTS
    assert report["server_errors_5xx"] == 0
    assert report["transport_errors"] == 0
    assert report["unexpected"] == 0, report["unexpected_examples"]
    assert report["server_alive_at_end"] and report["server_exit_code"] == 0

    by_kind = report["by_kind"]
    assert set(by_kind) == VALID_KINDS | INVALID_KINDS  # the seed-0 mix covers every kind
    assert by_kind["burst"]["count"] % 16 == 0
    for kind in VALID_KINDS:  # 200 with a predictions list / outputs (checked by the soak: unexpected == 0)
        assert set(by_kind[kind]["statuses"]) <= {"200", "OK"}, (kind, by_kind[kind])
    for kind in INVALID_KINDS:
        statuses = by_kind[kind]["statuses"]
        assert all(s == "INVALID_ARGUMENT" or 400 <= int(s) < 500 for s in statuses), (kind, statuses)
    assert by_kind["oversize_body"]["statuses"] == {"413": by_kind["oversize_body"]["count"]}
    assert (
        report["http_status_counts"].get("200", 0) + report["grpc_code_counts"].get("OK", 0)
        == report["valid_requests"]
    )

    lat = report["latency_valid_ms"]
    assert 0 < lat["p50"] <= lat["p99"]
    rss = report["rss_mib"]
    assert all(rss[k] > 50 for k in ("ready", "mid", "last_answer", "end"))
    assert rss["last_answer"] == report["rss_timeline"][-1]["rss_mib"]
    # the 0.5 s sampler ran during the requests: its peak is at least every phase's sample
    assert report["rss_peak_sampled_mib"] >= max(t["rss_mib"] for t in report["rss_timeline"])
    assert report["settle_s"] == 5.0
    assert report["rss_growth_from_ready_pct"] == pytest.approx(
        100 * (rss["end"] - rss["ready"]) / rss["ready"]
    )
    assert report["rss_growth_from_ready_pct"] < 25
