"""Detection telemetry: histogram counting, the /metrics exposition (:mod:`predictor.serving.telemetry`),
reference distributions and the drift CLI against a real server (:mod:`predictor.tools.drift`), and the
chart's optional PrometheusRule."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import test_deploy_chart
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from serving_fixtures import MODEL_NAME, b64, encode_image, start_server

from predictor.models import DEMO_MODEL_DIR
from predictor.serving import telemetry
from predictor.tools import drift

CLASSES = ("background", "circle", "square")
CHART = test_deploy_chart.CHART
run_helm = test_deploy_chart.run_helm
helm = test_deploy_chart.helm  # the session fixture installing the pinned helm binary


def test_bucket_counts_are_prometheus_le_buckets():
    bounds = (0.5, 1.0)
    # Prometheus buckets are "less than or equal": 0.5 belongs to le="0.5"
    assert telemetry.bucket_counts(np.array([0.1, 0.5, 0.50001, 1.0, 3.0]), bounds).tolist() == [2, 2, 1]
    grouped = telemetry.bucket_counts(np.array([0.1, 0.7, 0.7]), bounds, np.array([1, 0, 1]), 2)
    assert grouped.tolist() == [[0, 1, 0], [1, 1, 0]]


def _batch():
    """Two images (100x200 and 50x50): 2 detections and 1 (padding rows after them)."""
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[0, 0] = [0, 0, 100, 50]  # 5000 px of 20000: 0.25
    boxes[0, 1] = [0, 0, 20, 10]  # 200 / 20000: 0.01
    boxes[1, 0] = [0, 0, 50, 50]  # the whole image: 1.0
    boxes[0, 2] = [0, 0, 200, 100]  # padding, must not count
    scores = np.array([[0.93, 0.51, 0.9], [0.42, 0, 0]], np.float32)
    classes = np.array([[1, 2, 1], [2, 0, 0]], np.int32)
    return boxes, scores, classes, np.array([2, 1]), np.array([[100, 200], [50, 50]], np.float32)


def test_histograms_count_scores_areas_counts_and_sizes():
    h = telemetry.Histograms(CLASSES)
    h.observe(*_batch())
    data = h.to_json()
    score_bin = {round(b, 2): i for i, b in enumerate(telemetry.SCORE_BUCKETS)}
    assert sum(data["score"]["circle"]) == 1 and data["score"]["circle"][score_bin[0.95]] == 1
    assert data["score"]["square"][score_bin[0.55]] == 1 and data["score"]["square"][score_bin[0.45]] == 1
    area_bin = {b: i for i, b in enumerate(telemetry.AREA_BUCKETS)}
    assert data["area_fraction"]["circle"][area_bin[0.25]] == 1
    assert (
        data["area_fraction"]["square"][area_bin[0.01]] == 1
        and data["area_fraction"]["square"][area_bin[1.0]] == 1
    )
    count_bin = {b: i for i, b in enumerate(telemetry.COUNT_BUCKETS)}
    assert data["detections_per_image"][count_bin[1]] == 1 and data["detections_per_image"][count_bin[2]] == 1
    pixel_bin = {b: i for i, b in enumerate(telemetry.PIXEL_BUCKETS)}
    assert data["image_pixels"][pixel_bin[1e4]] == 1 and data["image_pixels"][pixel_bin[4e4]] == 1
    np.testing.assert_allclose(h.score_sum[1:], [0.93, 0.51 + 0.42], atol=1e-6)


def test_exposition_round_trips_through_the_drift_parser():
    registry = CollectorRegistry()
    collector = telemetry.TelemetryCollector()
    registry.register(collector)
    assert b"ssd_detection_score" not in generate_latest(registry)  # nothing before configure()
    hist = collector.configure(CLASSES)
    boxes, scores, classes, num, hw = _batch()
    collector.observe({"boxes": boxes, "scores": scores, "classes": classes, "num_detections": num}, hw)
    text = generate_latest(registry).decode()
    assert 'ssd_detection_score_bucket{class="circle",le="0.95"} 1.0' in text
    assert 'ssd_detections_per_image_bucket{le="0.0"} 0.0' in text
    assert "ssd_detection_box_area_fraction_count" in text and "ssd_input_image_pixels_sum 22500.0" in text
    live = drift.parse_live(text)
    expected = hist.to_json()
    for field in ("score", "area_fraction", "detections_per_image", "image_pixels"):
        assert live[field] == expected[field], field


def test_psi_and_ks_on_equal_and_shifted_distributions():
    ref = [10, 40, 100, 40, 10]
    assert drift.psi(ref, [2 * x for x in ref]) == pytest.approx(0.0)
    assert drift.ks_binned(ref, [2 * x for x in ref]) == (0.0, 1.0)
    shifted = [100, 40, 10, 40, 10]
    d, p = drift.ks_binned(ref, shifted)
    assert d == pytest.approx(0.45) and p < 1e-6
    assert drift.psi(ref, shifted) > 0.5
    # Kolmogorov tail at its well-known 5% point (x = 1.358)
    assert drift.kolmogorov_sf(1.358) == pytest.approx(0.05, abs=2e-3)


def test_compare_verdicts():
    ref = {
        "score": {"circle": [0, 50, 100, 50], "square": [0, 50, 100, 50]},
        "area_fraction": {"circle": [10, 10, 10, 10], "square": [10, 10, 10, 10]},
        "detections_per_image": [5, 5, 5],
        "image_pixels": [0, 10, 0],
    }
    live = {
        "score": {"circle": [0, 25, 50, 25], "square": [60, 20, 10, 10]},
        "area_fraction": {"circle": [10, 10, 10, 10], "square": [1, 1, 1, 1]},
        "detections_per_image": [50, 50, 50],
        "image_pixels": [0, 150, 0],
    }
    rows = {(r["distribution"], r["class"]): r["verdict"] for r in drift.compare(ref, live)}
    assert rows[("score", "circle")] == "ok"
    assert rows[("score", "square")] == "drift"
    assert rows[("area_fraction", "square")] == "too few"
    assert rows[("detections_per_image", "*")] == "ok"


def test_shipped_reference_matches_the_bucket_bounds():
    data = json.loads((DEMO_MODEL_DIR / "reference_distributions.json").read_text())
    assert data["format"] == drift.REFERENCE_FORMAT
    assert data["bounds"] == {
        "score": list(telemetry.SCORE_BUCKETS),
        "area_fraction": list(telemetry.AREA_BUCKETS),
        "detections_per_image": list(telemetry.COUNT_BUCKETS),
        "image_pixels": list(telemetry.PIXEL_BUCKETS),
    }
    assert set(data["score"]) == {"circle", "square", "triangle", "star", "hexagon", "cross"}
    assert sum(data["detections_per_image"]) == data["images"] >= 200


def _histograms(data: dict) -> dict[tuple[str, str], list[int]]:
    """Every histogram of a reference file by (distribution, class); ``*`` for the per-image ones."""
    out = {(d, c): counts for d in ("score", "area_fraction") for c, counts in data[d].items()}
    out.update({(d, "*"): data[d] for d in ("detections_per_image", "image_pixels")})
    return out


def test_reference_command_is_what_was_shipped(tmp_path):
    """The shipped file is what the command makes: ``reference`` re-run here over the same images as the
    shipped file (its ``images`` count, the same seed) gives the same metadata and the same histograms.
    Counts may move by a detection or two where another CPU rounds a score across a threshold
    differently; this machine reproduces them exactly."""
    shipped = json.loads((DEMO_MODEL_DIR / "reference_distributions.json").read_text())
    out = tmp_path / "ref.json"
    assert drift.main(["reference", "--count", str(shipped["images"]), "--out", str(out)]) == 0
    fresh = json.loads(out.read_text())
    for key in ("format", "model", "source", "images", "score_threshold", "nms_threshold", "max_detections"):
        assert fresh[key] == shipped[key], key
    assert fresh["bounds"] == shipped["bounds"]
    ours, theirs = _histograms(fresh), _histograms(shipped)
    assert ours.keys() == theirs.keys()
    for key, counts in theirs.items():
        assert len(ours[key]) == len(counts), key
        moved = sum(abs(a - b) for a, b in zip(ours[key], counts, strict=True))
        assert moved <= max(2, sum(counts) // 100), (key, ours[key], counts)
    # and the detections are all there: every histogram of one image's boxes counts each box once
    boxes = sum(sum(c) for (d, _), c in theirs.items() if d == "score")
    assert boxes == sum(sum(c) for (d, _), c in theirs.items() if d == "area_fraction") > shipped["images"]


# ----------------------------------------------------------------------------- real server
def _zoomed(image: np.ndarray) -> np.ndarray:
    """The central half of an image, as a camera zoom would give (objects 4x larger per image area)."""
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2])


@pytest.fixture(scope="module")
def demo_server(demo_model_dir, tmp_path_factory):
    server = start_server(demo_model_dir, tmp_path_factory.mktemp("telemetry") / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


def _send(server, images: list[np.ndarray]) -> None:
    bodies = [
        {"instances": [b64(encode_image(im, "PNG")) for im in images[i : i + 4]]}
        for i in range(0, len(images), 4)
    ]
    with httpx.Client(base_url=server.url, timeout=120) as client, ThreadPoolExecutor(3) as pool:
        for r in pool.map(lambda body: client.post(f"/v1/models/{MODEL_NAME}:predict", json=body), bodies):
            assert r.status_code == 200, r.text


def test_drift_cli_against_a_live_server(demo_server, capsys):
    from predictor.datasets.shapes import EVAL_SEED, generate_sample

    reference = json.loads((DEMO_MODEL_DIR / "reference_distributions.json").read_text())
    first_unused = reference["images"]
    url = f"{demo_server.url}/metrics"
    # Held-out images the reference did not use: same distribution, no drift.
    clean = [generate_sample(EVAL_SEED, first_unused + i).image for i in range(80)]
    _send(demo_server, clean)
    text = httpx.get(url).text
    assert 'ssd_detection_score_bucket{class="circle",le="1.0"}' in text
    assert drift.main(["drift", "--metrics-url", url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum(r["live_n"] for r in rows if r["distribution"] == "detections_per_image") == 80
    assert not [r for r in rows if r["verdict"] == "drift"]
    # A zoomed camera: boxes cover 4x more of each image, and images are 4x smaller.
    _send(demo_server, [_zoomed(generate_sample(EVAL_SEED, first_unused + 80 + i).image) for i in range(160)])
    assert drift.main(["drift", "--metrics-url", url]) == 1
    report = capsys.readouterr().out
    drifted = report.split("drifted: ")[-1]
    assert "image_pixels[*]" in drifted and "detections_per_image[*]" in drifted, report
    assert "score[" in drifted or "area_fraction[" in drifted, report  # names the classes that moved


def test_drift_cli_errors(tmp_path, capsys):
    assert drift.main(["drift", "--metrics-file", str(tmp_path / "missing.txt")]) == 2
    (tmp_path / "other.txt").write_text("# just another exporter\nup 1\n")
    assert drift.main(["drift", "--metrics-file", str(tmp_path / "other.txt")]) == 2
    assert "no ssd_detection_" in capsys.readouterr().err


# ----------------------------------------------------------------------------- chart
def test_prometheus_rule_is_optional_and_renders(helm):
    off = run_helm(helm, "template", "r", str(CHART))
    assert off.returncode == 0 and "PrometheusRule" not in off.stdout
    on = run_helm(
        helm, "template", "r", str(CHART), "--namespace", "vision", "--set", "prometheusRule.enabled=true",
        "--set", "prometheusRule.labels.release=kube-prometheus-stack", "-s", "templates/prometheusrule.yaml",
    )  # fmt: skip
    assert on.returncode == 0, on.stderr
    rule = yaml.safe_load(on.stdout)
    assert (
        rule["kind"] == "PrometheusRule" and rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    )
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    ratio_alerts = {
        "SSDPredictorErrors",
        "SSDPredictorOverloaded",
        "SSDClientErrors",
        "SSDImagesWithoutDetections",
        "SSDLowDetectionScores",
        "SSDDetectionDrift",
    }
    burn_alerts = {f"SSD{slo}BudgetBurn{s}" for slo in ("Availability", "Latency") for s in ("", "Slow")}
    assert set(alerts) == ratio_alerts | burn_alerts  # the burn-rate ones: tests/test_alert_rules.py
    for name in ratio_alerts:
        assert 'namespace="vision"' in alerts[name]["expr"] and alerts[name]["for"] == "15m"
    # the metric names in the rules are the ones the server exports
    assert "ssd_detections_per_image_bucket" in alerts["SSDImagesWithoutDetections"]["expr"]
    assert "{{ $labels.class }}" in alerts["SSDLowDetectionScores"]["annotations"]["summary"]
    bad = run_helm(helm, "template", "r", str(CHART), "--set", "prometheusRule.errorRatio=2")
    assert bad.returncode != 0 and "errorRatio" in bad.stderr


def test_the_serving_package_imports_no_offline_code():
    """The runtime keeps only what runs in the server: no module of predictor/serving/ imports the
    datasets or the offline tools (the drift CLI lives in predictor/tools/drift.py), even lazily."""
    import ast
    from pathlib import Path

    import predictor.serving

    offline = ("predictor.datasets", "predictor.tools")
    found = []
    for path in sorted(Path(predictor.serving.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n.startswith(offline)]
    assert not found, found
