"""Smoke tests of the benchmark scripts (bench/): end to end with tiny settings; no timing asserts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    """Import ``bench/<name>.py`` by path (the repo root is not on ``sys.path`` under pytest)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wheel_tags_select_the_interpreter():
    deps = _load("gpu_deps")
    cp = f"cp{sys.version_info.major}{sys.version_info.minor}"
    import platform

    machine = platform.machine()
    assert deps.wheel_fits("keras-3.15.1-py3-none-any.whl")
    assert deps.wheel_fits(f"optree-0.20.0-{cp}-{cp}-manylinux_2_27_{machine}.manylinux_2_28_{machine}.whl")
    assert not deps.wheel_fits(f"optree-0.20.0-cp39-cp39-manylinux_2_28_{machine}.whl")
    assert not deps.wheel_fits(f"optree-0.20.0-{cp}-{cp}-manylinux_2_28_riscv64.whl")
    assert not deps.wheel_fits("py2only-1.0-py2-none-any.whl")
    # One wheel for every Python, per machine (nvImageCodec, nvJPEG).
    assert deps.wheel_fits(f"nvidia_nvimgcodec_cu12-0.9.0.20-py3-none-manylinux_2_28_{machine}.whl")
    assert deps.wheel_fits(f"nvidia_nvjpeg_cu12-12.4.0.76-py3-none-manylinux2014_{machine}.whl")
    assert not deps.wheel_fits("nvidia_nvimgcodec_cu12-0.9.0.20-py3-none-manylinux_2_28_riscv64.whl")
    assert not deps.wheel_fits(f"nvidia_nvimgcodec_cu12-0.9.0.20-py3-none-win_{machine}.whl")


def test_gpu_decode_resize_is_the_services_warp_resize():
    """bench/gpu_decode.py's JAX resize (run here on the CPU) against the service's NumPy WARP resize,
    on JPEGs of its synthetic photos (Pillow encodes here; nvImageCodec on the device)."""
    import io

    import numpy as np
    from PIL import Image

    from predictor.ssd.preprocess import resize_warp_numpy

    decode = _load("gpu_decode")
    photo = decode.synthetic_photo(481, 643, seed=1)
    assert photo.shape == (481, 643, 3) and photo.dtype == np.uint8 and photo.std() > 20
    jpegs, encoder = decode.encode_jpegs([photo], None)
    assert encoder == "pillow" and len(jpegs[0]) < photo.nbytes / 5  # compresses like a photo
    image = np.asarray(Image.open(io.BytesIO(jpegs[0])).convert("RGB"))
    ours = np.asarray(decode.warp_resize(image, 300))
    np.testing.assert_allclose(ours, resize_warp_numpy(image, 300), rtol=0, atol=1e-3)

    # One measurement row end to end, with Pillow standing in for the GPU decoder (host buffers also
    # speak DLPack): the hand-over, the resize's shape, both rates.
    class PillowDecoder:
        def decode(self, data: list[bytes]) -> list[np.ndarray]:
            return [np.array(Image.open(io.BytesIO(d)).convert("RGB")) for d in data]

    import jax

    row: dict = {}
    resize = jax.jit(decode.warp_resize, static_argnums=1)
    decode.measure_row(row, PillowDecoder(), resize, jpegs * 3, 300, 0.01)
    assert "error" not in row and row["handover"] == "dlpack", row
    assert row["decode_images_per_s"] > row["decode_resize_images_per_s"] > 0


def test_raw_model_times_run_batch_on_what_the_server_feeds(random_tiny_model_dir, monkeypatch):
    """The raw bench's ``run_batch`` gets what the batcher gives it (a list of resized rows), so every
    call reaches the network through an aligned bucket buffer (DLPack, no ``tf.constant`` copy)."""
    import io

    from PIL import Image

    from bench import raw_model
    from predictor.datasets.shapes import generate_sample
    from predictor.ssd import detector as detector_module

    given, fed = [], []
    run_batch, input_tensor = detector_module.Detector.run_batch, detector_module.input_tensor

    def spy_run_batch(self, images, *args, **kwargs):
        given.append((type(images).__name__, len(images)))
        return run_batch(self, images, *args, **kwargs)

    def spy_input_tensor(images):
        fed.append((images.ctypes.data % detector_module.TENSOR_ALIGN, images.flags.c_contiguous))
        return input_tensor(images)

    monkeypatch.setattr(detector_module.Detector, "run_batch", spy_run_batch)
    monkeypatch.setattr(detector_module, "input_tensor", spy_input_tensor)
    monkeypatch.setattr(raw_model, "model_dir", lambda name, out_dir: (random_tiny_model_dir, "tiny"))
    jpegs = []
    for i in range(2):
        buf = io.BytesIO()
        Image.fromarray(generate_sample(0, i).image).save(buf, format="JPEG")
        jpegs.append(buf.getvalue())
    args = raw_model.parse_args(["--batches", "1,2", "--min_time_s", "0.01", "--min_iters", "1"])
    result = raw_model.bench_model("demo", args, 1.0, jpegs)
    assert [r["batch"] for r in result["detector"]] == [1, 2]
    assert given and {name for name, _ in given} == {"list"} and {n for _, n in given} == {1, 2}
    assert fed and set(fed) == {(0, True)}, fed


@pytest.mark.timeout(600)
def test_run_all_quick_end_to_end(tmp_path):
    """raw model -> ONNX Runtime peer -> real server (V1, V2, gRPC) -> ratios, JSON and plot."""
    for module in ("onnxruntime", "tf2onnx", "matplotlib"):
        pytest.importorskip(module, reason="benchmark extras: pip install -e '.[bench]'")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "bench.run_all", "--quick", "--models", "demo", "--out_dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    data = json.loads((tmp_path / "bench.json").read_text())
    demo = data["raw"]["models"]["demo"]
    assert [r["batch"] for r in demo["detector"]] == [1, 2]
    assert demo["gflop_per_image"] > 0 and demo["decode_resize_ms"]
    onnx = data["onnx"]["models"]["demo"]
    assert max(onnx["max_abs_diff_vs_tf"].values()) < 1e-3
    served = data["served"]["models"]["demo"]["rows"]
    assert {(r["protocol"], r["concurrency"]) for r in served} == {
        (p, c) for p in ("v1", "v2", "grpc") for c in (1, 2)
    }
    assert all(r["errors"] == 0 and r["warmup_errors"] == 0 and r["requests"] > 0 for r in served)
    ratios = data["ratios"]["demo"]
    assert set(ratios) == {
        "ours_over_ort",
        "served_over_raw",
        "p50_c1_over_raw_plus_decode",
        "served_over_raw_ceiling",
        "served_over_ceiling",
    }
    # The ceiling is arithmetic on measured numbers (its size depends on the machine's load, so it is a
    # benchmark's figure, not a test's): recomputed here from the components the JSON records.
    ceiling = ratios["served_over_raw_ceiling"]
    ref = next(r for r in demo["detector"] if r["batch"] == ceiling["raw_batch"])
    model_ms = 1000.0 * ref["process_cores_used"] / ref["images_per_s"]
    decode_ms = sum(demo["decode_resize_ms"].values()) / len(demo["decode_resize_ms"])
    assert ceiling["model_cpu_ms_per_image"] == pytest.approx(model_ms, rel=1e-9)
    assert ceiling["decode_resize_ms_per_image"] == pytest.approx(decode_ms, rel=1e-9)
    expected = 1000.0 * ceiling["cores"] / (model_ms + decode_ms) / ref["images_per_s"]
    assert ceiling["ceiling"] == pytest.approx(expected, rel=1e-9) and ceiling["ceiling"] > 0
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert "##### ratios" in proc.stdout

    # The RESULTS.md renderers of these stages read the real JSON: one table row per measurement.
    from bench.results import BLOCKS, render_block

    assert BLOCKS["raw-model"].source == "raw_model.json"
    raw_md = render_block("raw-model", json.loads((tmp_path / "raw_model.json").read_text()))
    assert raw_md.startswith("_`make bench-model`, ") and "\n| 2 | " in raw_md
    served_md = render_block("served", json.loads((tmp_path / "served.json").read_text()))
    assert all(f"\n| {p} | {c} | " in served_md for p in ("v1", "v2", "grpc") for c in (1, 2))
    # The per-thread profile of the top concurrency: the decode and model-call threads named by the server.
    for row in (r for r in served if r["concurrency"] == 2):
        ms = row["threads"]["cpu_ms_per_image"]
        assert ms["decode"] > 0 and ms["model call"] > 0 and ms["event loop"] > 0, row["threads"]
    assert all(f"\n| demo | {p} | 2 | " in served_md for p in ("v1", "v2", "grpc"))
    onnx_md = render_block("onnx-peer", json.loads((tmp_path / "onnx_peer.json").read_text()))
    assert "\n| demo | 1 | " in onnx_md and "\n| demo | 2 | " in onnx_md
    assert "| demo | ours / ONNX Runtime" in render_block("ratios", data)
    assert "| compiled detection function, batch 1 | " in render_block("summary", data)


@pytest.mark.timeout(300)
def test_gpu_check_runs_without_tensorflow(tmp_path):
    """The GPU check script on the CPU (JAX backend; `make install` installs JAX): it must not import TF."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "OUT": str(tmp_path)}
    cmd = [sys.executable, "bench/gpu_check.py", "--tiny", "--models", "demo", "--dtypes", "float32"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["tensorflow_imported"] is False
    assert [r["batch"] for r in data["rows"]] == [1, 2] and all("images_per_s" in r for r in data["rows"])
    from bench.results import render_block

    table = render_block("gpu-check", data)
    assert "\n| demo | float32 | 1 | " in table and "\n| demo | float32 | 2 | " in table
    # The decode rows: measured where nvImageCodec and a GPU are there, else each says why not.
    decode = data["decode_rows"]
    assert [(r["size"], r["batch"]) for r in decode][:2] == [("vga", 1), ("vga", 2)]
    for row in decode:
        assert row.get("decode_resize_images_per_s", 0) > 0 or "nvImageCodec" in row.get("skipped", ""), row
    assert "\n| vga | " in table


@pytest.mark.timeout(600)
def test_cold_start_breakdown(tmp_path):
    """bench/cold_start.py: a real server spawned to ready, and the phases: one trace, every bucket."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "bench.cold_start", "--models", "demo", "--repeats", "1"]
    cmd += ["--out_dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads((tmp_path / "cold_start.json").read_text())
    (run,) = data["models"]["demo"]["configurations"]["this"]["runs"]
    assert run["server"]["ready_s"] > 0 and "warm-up done" in run["server"]["warmup_log"]
    phases = run["phases"]
    assert list(phases["warmup_per_bucket_s"]) == ["1", "2", "4", "8", "16", "32"]
    assert phases["traces"] == 1
    assert Path(phases["predictor"]) == REPO / "predictor", "the bench measures this checkout"
    assert "| demo | this | 1 |" in proc.stdout
    from bench.results import render_block

    assert "\n| demo | this | 1 | " in render_block("cold-start", data)


@pytest.mark.timeout(300)
def test_postprocess_variants_smoke(tmp_path):
    """bench.postprocess_variants at batch 1, one round: every variant timed, the shipped one agreeing
    with the unsized one, and the RESULTS.md block rendered from its JSON."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = tmp_path / "postprocess_variants.json"
    cmd = [sys.executable, "-m", "bench.postprocess_variants", "--models", "demo", "--batches", "1",
           "--reps", "1", "--low_batches", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    (row,) = data["models"]["demo"]["rows"]
    assert row["batch"] == 1 and row["candidates_passed_max"] > 0
    assert row["agrees"] == {
        "top400": True, "sized_decode_all": True, "sized_softmax_all": True, "sized_iou": True, "sized": True,
        "sized_xla": True, "combined_nms": True, "no_nms": None,
    }  # fmt: skip
    assert all(t["min"] > 0 for t in row["ms_per_image"].values()) and len(row["ms_per_image"]) == 17

    from bench.results import render_block

    md = render_block("postprocess-variants", data)
    assert md.startswith("_`make bench-postprocess`, ") and "\n| 1 | sized | " in md

    # the low-threshold row: so many anchors may pass that the shipped code scores every anchor
    from predictor.ssd.postprocess import CANDIDATE_ANCHORS, CANDIDATE_SLOTS

    low = data["models"]["demo"]["low_threshold"]
    assert low["threshold"] == 0.01 and low["candidate_anchors"] == CANDIDATE_ANCHORS
    assert low["largest_slot"] == max(CANDIDATE_SLOTS)
    (row,) = low["rows"]
    assert row["batch"] == 1 and row["candidates_passed_max"] >= 1 and row["anchors_may_pass_max"] >= 1
    assert row["agrees"] == {"top400": True, "sized_softmax_all": True, "sized": True}
    timed = ("top400", "sized_softmax_all", "sized")
    keys = ["network", *(f"{part}:{v}" for part in ("post", "whole") for v in timed)]
    assert sorted(row["ms_per_image"]) == sorted(keys)
    table = md[md.index("demo at score threshold 0.01") :]
    # the branch the caption names is the one observed (postprocess_with_path), and it follows from the
    # recorded counts (whatever the shipped weights give): the smallest anchor tier holding those that
    # may pass (else every anchor), their anchors decoded when more candidates than the largest slot
    from bench.postprocess_variants import branch_taken
    from predictor.ssd.postprocess import anchor_tiers

    path, tiers = row["path"], anchor_tiers(row["path"]["anchors"])
    holding = [t for t in tiers if t >= row["anchors_may_pass_max"]]
    assert path["every_anchor"] is not bool(holding)
    assert path["scored"] == (holding[0] if holding else path["anchors"])
    if row["candidates_passed_max"] > max(CANDIDATE_SLOTS):
        assert path["decoded"] == path["scored"] and path["candidates"] == 400
    else:
        assert path["decoded"] == path["candidates"] >= row["candidates_passed_max"]
    counts = f"batch 1: {row['candidates_passed_max']} / {row['anchors_may_pass_max']}"
    assert f"{counts} ({branch_taken(row, low)})" in table
    assert table.count("\n| 1 | ") == 3 and "\n| 1 | sized | " in table


@pytest.mark.timeout(300)
def test_served_vs_raw_smoke(tmp_path):
    """bench.served_vs_raw on the demo model, one round of a call of 2: the served call is one model call
    whose images the decode threads decoded; the raw call decodes nothing; both spend model-thread CPU."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = tmp_path / "served_vs_raw.json"
    cmd = [sys.executable, "-m", "bench.served_vs_raw", "--model", "demo", "--batch", "2", "--rounds", "1",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["malloc_tuned"] is True and data["settings"]["batch"] == 2
    (served,), (raw,) = data["runs"]["served"], data["runs"]["raw"]
    assert served["groups_ms"]["decode"] > 0 and raw["groups_ms"]["decode"] == 0
    for row in (served, raw):
        assert row["user_ms"] > 0 and row["wall_ms"] > 0
        assert row["groups_ms"]["model call"] > 0
    assert set(data["summary"]) == {"served", "raw"}


def test_decode_copies_paths_agree_with_the_servers_and_the_view_shares_pillows_memory():
    """``bench/decode_copies.py``: its zero-copy RGBX view aliases the Pillow image's pixels, and every
    timed path but Pillow's 8-bit affine resize gives the server's row bit for bit."""
    import io

    import numpy as np
    from PIL import Image

    from bench import decode_copies

    pixels = np.random.default_rng(5).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image = Image.open(io.BytesIO(_jpeg(pixels)))
    image.load()
    view = decode_copies.rgbx_view(image)
    assert view.shape == (37, 53, 4) and np.array_equal(view[..., :3], np.asarray(image))
    image.putpixel((5, 7), (1, 2, 3))
    assert view[7, 5, :3].tolist() == [1, 2, 3]  # the same memory, no copy
    paths = decode_copies.paths(image, 16)
    reference = paths.pop("asarray")()
    affine = paths.pop("pillow_affine")()
    for name, fn in paths.items():
        assert np.array_equal(fn(), reference), name
    assert affine.shape == reference.shape and np.abs(affine - reference).max() <= 1.0


def _jpeg(pixels) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()
