"""CPU cost of the serving pipeline per image, stage by stage, against the bare Pillow decode + resize.

For VGA (640x480), 1080p (1920x1080) and 12 MP (4000x3000) JPEGs and a 1080p PNG, generated here
deterministically (shapes-dataset scenes upscaled, plus gradients and seeded noise so they compress like
photos), every stage a request goes through is timed on its own in this process with
``time.process_time`` (CPU seconds of all this process's threads, so work TensorFlow hands to its own
thread pools counts too; nothing else runs in the process meanwhile):

  parse      V1 JSON body -> orjson -> ``codecs.parse_v1`` (the request's JSON, not the pixels)
  base64     ``images.decode_base64`` (``base64_tolerant``: its slower path for line breaks, URL-safe ...)
  decode     Pillow open + decode at full size (``draft``: at the reduced JPEG scale)
  exif+mode  EXIF orientation + RGB array (``decode_image`` minus the bare decode)
  resize     ``Detector.resize`` (TF1 bilinear from uint8: TensorFlow's kernel up to 3.2 MP, NumPy beyond);
             ``resize_tf``: ``resize_warp`` after ``tf.convert_to_tensor`` (the call before the NumPy resize)
  assembly   rows into one aligned bucket buffer + the tensor handed to the model, sharing it (batch 8)
  post       detections -> V2 arrays (20 detections per image)
  encode     V1 JSON response bytes

Side by side, the *bare limit*: Pillow ``open`` + ``resize((S, S), BILINEAR)`` of the same bytes and
nothing else (with and without ``draft``). Per-core images/s is ``1 / CPU seconds per image``.

Then the *served* rate: a real ``python -m predictor`` server (the demo model) on loopback, driven with
1080p JPEGs over V1 at ``--concurrency``; the server process's CPU seconds (``/proc/<pid>/stat`` via
psutil) per image, minus the model's share, gives the serving pipeline's per-core rate, compared with the
bare rate measured in the same run. The model's share is counted call by call: the server's
``ssd_batch_size`` histogram says how many calls landed in each batch bucket during the timed run, and
each bucket's CPU per call is measured in this process (a call of 3 images costs what bucket 4 costs).

Stages are measured on purpose through the server's own public stage functions:
``predictor.serving.images`` (``decode_base64``, ``decode_image_reduced``, ``check_pixel_array``, see its
docstring), ``predictor.serving.codecs`` (``parse_v1``, ``parse_v2``, ``v2_arrays``, ``encode_v1``,
``ResponseDetections``), ``Detector.resize`` and, for comparison, ``predictor.ssd.preprocess.resize_warp``.

``python -m bench.pipeline [--quick]`` -> tables + ``bench/out/pipeline.json`` (``make bench-pipeline``
also rewrites the pipeline tables of ``bench/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    OUT_DIR,
    Clients,
    batch_delta,
    fmt_table,
    machine_info,
    model_dir,
    parse_batch_histogram,
    run_cell,
    start_bench_server,
    write_json,
)

IMAGES: tuple[tuple[str, str, int, int], ...] = (
    ("VGA JPEG", "JPEG", 640, 480),
    ("1080p JPEG", "JPEG", 1920, 1080),
    ("12MP JPEG", "JPEG", 4000, 3000),
    ("1080p PNG", "PNG", 1920, 1080),
)
SEED = 20261202
#: SSD300 forward rates on one H100 (bench/RESULTS.md, GPU check 2026-11-25): fp32 batch 32, bf16 batch 128.
H100_SSD300_IMAGES_PER_S = {"float32": 3356.3, "bfloat16": 7406.5}
BATCH = 8
DETECTIONS_PER_IMAGE = 20


def make_image(width: int, height: int, fmt: str, seed: int = SEED) -> bytes:
    """A deterministic photo-like image: a shapes scene upscaled, a colour gradient and mild noise."""
    from PIL import Image

    from predictor.datasets.shapes import generate_sample

    scene = Image.fromarray(generate_sample(seed, 0).image).resize((width, height), Image.BICUBIC)
    rng = np.random.default_rng(seed)
    gradient = (
        np.linspace(0, 40, width, dtype=np.float32)[None, :, None]
        + np.linspace(0, 30, height, dtype=np.float32)[:, None, None]
    )
    noise = rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    pixels = np.clip(np.asarray(scene, np.float32) * 0.85 + gradient + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    kwargs = {"quality": 90} if fmt == "JPEG" else {"compress_level": 6}
    Image.fromarray(pixels).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def cpu_ms(fn: Callable[[], Any], min_time_s: float, min_iters: int = 3) -> float:
    """Median CPU milliseconds (this process) of ``fn()`` over repeated calls (after one warm-up call)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time_s:
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return 1e3 * float(np.median(times))


def stage_costs(data: bytes, detector: Any, min_time_s: float) -> dict[str, float]:
    """CPU ms per image of each pipeline stage, the full pipeline and the bare limit, for one image."""
    import orjson
    import tensorflow as tf
    from PIL import Image

    from predictor.serving import codecs
    from predictor.serving.images import ImageLimits, decode_base64, decode_image_reduced
    from predictor.ssd.detector import aligned_empty, input_tensor
    from predictor.ssd.preprocess import resize_warp

    s = detector.input_size
    limits = ImageLimits()
    text = base64.b64encode(data).decode()
    body = orjson.dumps({"instances": [{"b64": text}]})

    def bare_decode(draft: bool) -> Image.Image:
        image = Image.open(io.BytesIO(data))
        if draft:
            image.draft(None, (s, s))
        image.load()
        return image

    def pillow_resize(draft: bool) -> Image.Image:
        return bare_decode(draft).convert("RGB").resize((s, s), Image.BILINEAR)

    full = decode_image_reduced(data, limits, draft_size=None).pixels
    reduced = decode_image_reduced(data, limits, draft_size=s).pixels
    rows = np.stack([detector.resize(full)] * BATCH)
    dets = _fake_detections(BATCH, full.shape[:2])

    def assemble() -> None:  # Detector._bucket_images + _run_bucket's input
        buffer = aligned_empty((BATCH, s, s, 3))
        for i in range(BATCH):
            buffer[i] = rows[i]
        input_tensor(buffer)

    c: dict[str, float] = {}
    c["parse"] = cpu_ms(lambda: codecs.parse_v1(orjson.loads(body), max_batch_size=32, max_detections=200),
                        min_time_s)  # fmt: skip
    c["base64"] = cpu_ms(lambda: decode_base64(text, limits.max_bytes), min_time_s)
    wrapped = text + "\n"  # a line break: the tolerant path (what every image took before the fast path)
    c["base64_tolerant"] = cpu_ms(lambda: decode_base64(wrapped, limits.max_bytes), min_time_s)
    c["decode"] = cpu_ms(lambda: bare_decode(False), min_time_s)
    c["decode_draft"] = cpu_ms(lambda: bare_decode(True), min_time_s)
    full_ms = cpu_ms(lambda: decode_image_reduced(data, limits, draft_size=None), min_time_s)
    draft_ms = cpu_ms(lambda: decode_image_reduced(data, limits, draft_size=s), min_time_s)
    c["exif_mode"] = max(0.0, full_ms - c["decode"])
    c["exif_mode_draft"] = max(0.0, draft_ms - c["decode_draft"])
    c["resize"] = cpu_ms(lambda: detector.resize(full), min_time_s)
    c["resize_draft"] = cpu_ms(lambda: detector.resize(reduced), min_time_s)
    c["resize_tf"] = cpu_ms(lambda: resize_warp(tf.convert_to_tensor(full), s).numpy(), min_time_s)
    c["assembly"] = cpu_ms(assemble, min_time_s) / BATCH
    c["post"] = cpu_ms(lambda: codecs.v2_arrays(dets, detector.class_names), min_time_s) / BATCH
    c["encode"] = cpu_ms(lambda: codecs.encode_v1(dets, detector.class_names), min_time_s) / BATCH
    shared = c["parse"] + c["base64"] + c["assembly"] + c["post"] + c["encode"]
    c["pipeline"] = shared + c["decode"] + c["exif_mode"] + c["resize"]
    c["pipeline_draft"] = shared + c["decode_draft"] + c["exif_mode_draft"] + c["resize_draft"]
    c["bare"] = cpu_ms(lambda: pillow_resize(False), min_time_s)
    c["bare_draft"] = cpu_ms(lambda: pillow_resize(True), min_time_s)
    return c


def draft_scales(data: bytes, min_time_s: float) -> dict[str, float]:
    """CPU ms of Pillow's bare JPEG decode at every DCT scale libjpeg offers (1, 1/2, 1/4, 1/8).

    The ceiling of what ``draft`` can give: a reduced scale skips most of the inverse DCT, upsampling
    and colour conversion, not the entropy (Huffman) decoding, which every scale still does in full.
    """
    from PIL import Image

    width, height = Image.open(io.BytesIO(data)).size

    def decode(scale: int) -> None:
        image = Image.open(io.BytesIO(data))
        if scale > 1:
            image.draft("RGB", (width // scale, height // scale))
        image.load()

    return {f"1/{scale}": cpu_ms(lambda scale=scale: decode(scale), min_time_s) for scale in (1, 2, 4, 8)}


def uint8_costs(detector: Any, min_time_s: float) -> dict[str, float]:
    """CPU ms per image of the zero-decode input: a V2 ``UINT8 [1, H, W, 3]`` tensor (raw contents)
    parsed, validated and resized, plus the shared per-image costs (assembly, post, encode)."""
    from kserve.protocol.infer_type import InferInput, InferRequest

    from predictor.serving import codecs
    from predictor.serving.images import ImageLimits, check_pixel_array

    out = {}
    for name, (w, h) in (("1080p", (1920, 1080)), ("network size", (detector.input_size,) * 2)):
        pixels = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        raw = pixels.tobytes()

        def run(h: int = h, w: int = w, raw: bytes = raw) -> None:
            request = InferRequest("m", [InferInput("images", [1, h, w, 3], "UINT8")], raw_inputs=[raw])
            payload = codecs.parse_v2(request, max_batch_size=32, max_detections=200).images[0]
            detector.resize(check_pixel_array(payload.pixels, ImageLimits()))

        out[name] = cpu_ms(run, min_time_s)
    return out


def _fake_detections(n: int, hw: tuple[int, int]) -> Any:
    from predictor.serving.codecs import ResponseDetections

    rng = np.random.default_rng(0)
    d = DETECTIONS_PER_IMAGE
    xy = rng.uniform(0, 0.5, (n, d, 2)) * hw[::-1]
    boxes = np.concatenate([xy, xy + rng.uniform(10, 100, (n, d, 2))], axis=-1).astype(np.float32)
    scores = np.sort(rng.uniform(0.3, 1.0, (n, d)).astype(np.float32), axis=1)[:, ::-1]
    classes = rng.integers(1, 6, (n, d)).astype(np.int32)
    return ResponseDetections(boxes, scores, classes, np.full(n, d, np.int32))


def model_cpu_ms(detector: Any, min_time_s: float, max_images: int = BATCH) -> dict[int, float]:
    """CPU ms of one model call (all of this process's threads) per batch bucket up to ``max_images``.

    The detector pads a batch of ``n`` images to its bucket, so a call costs what its bucket costs:
    ``{bucket: ms per call}`` for every bucket a server batch of at most ``max_images`` can land in.
    Each call gets what the batcher gives it, a list of rows (copied into an aligned bucket buffer the
    network takes over), not a whole stacked array (misaligned, so copied again by ``tf.constant``).
    """
    s = detector.input_size
    row = np.zeros((s, s, 3), np.float32)
    out: dict[int, float] = {}
    for bucket in (b for b in detector.buckets if b <= detector.bucket_for(max_images)):
        images = [row] * bucket
        hw = np.full((bucket, 2), s, np.float32)
        detector.run_batch(images, hw)
        calls = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        while calls < 3 or time.perf_counter() - wall0 < min_time_s:
            detector.run_batch(images, hw)
            calls += 1
        out[bucket] = 1e3 * (time.process_time() - cpu0) / calls
    return out


def batch_calls(metrics_text: str) -> dict[int, float]:
    """Model calls per batch bucket so far, from the server's ``ssd_batch_size`` histogram
    (:func:`bench.common.batch_delta` from an empty one): a call of ``n`` images is counted under the
    smallest bound >= ``n``, the bucket it was padded to."""
    empty = {"buckets": {}, "sum": 0.0, "count": 0.0}
    return batch_delta(empty, parse_batch_histogram(metrics_text)).get("calls_by_bucket", {})


def model_cpu_of_calls(calls: dict[int, float], per_call_ms: dict[int, float]) -> float:
    """CPU ms the model used for ``calls`` (``{bucket: count}``), from in-process per-call costs."""
    missing = [b for b, n in calls.items() if n and b not in per_call_ms]
    if missing:
        raise ValueError(f"no in-process model cost measured for bucket(s) {missing}")
    return sum(n * per_call_ms[b] for b, n in calls.items() if n)


def served_rate(
    data: bytes, args: argparse.Namespace, model_ms: dict[int, float], draft: bool
) -> dict[str, Any]:
    """Server process CPU per image for one image served over V1 (and gRPC) at ``--concurrency``.

    The model's share is the calls the server actually made (its batch-size histogram: how many calls
    landed in each bucket) times each bucket's in-process cost; the rest is the serving pipeline.
    """
    import httpx

    path, _ = model_dir("demo", args.out_dir)
    extra = ["--jpeg_draft" if draft else "--no-jpeg_draft", *args.server_args.split()]
    log_path = args.out_dir / f"pipeline_server{'_draft' if draft else ''}.log"
    server = start_bench_server(path, log_path, extra, args.startup_timeout_s)
    metrics_url = f"http://127.0.0.1:{server.http_port}/metrics"
    result: dict[str, Any] = {"draft": draft}
    try:

        async def drive() -> None:
            clients = Clients(server, [data], args.concurrency)
            try:
                for protocol in ("v1", "grpc"):
                    send = clients.request_fn(protocol)
                    await run_cell(send, args.concurrency, 1.0, 1)  # warm
                    calls0, cpu0 = batch_calls(httpx.get(metrics_url).text), server.cpu_seconds()
                    row = await run_cell(send, args.concurrency, args.served_s, 2)
                    cpu1, calls1 = server.cpu_seconds(), batch_calls(httpx.get(metrics_url).text)
                    calls = {b: calls1[b] - calls0.get(b, 0.0) for b in calls1}
                    images = max(row["requests"], 1)
                    server_ms = 1e3 * (cpu1 - cpu0) / images
                    model = model_cpu_of_calls(calls, model_ms) / images
                    result[protocol] = {
                        "images_per_s": row["images_per_s"],
                        "errors": row["errors"],
                        "model_calls_per_bucket": {str(b): n for b, n in calls.items() if n},
                        "server_cpu_ms_per_image": server_ms,
                        "model_cpu_ms_per_image": model,
                        "pipeline_cpu_ms_per_image": server_ms - model,
                    }
            finally:
                await clients.close()

        asyncio.run(drive())
    finally:
        server.terminate()
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min_time_s", type=float, default=1.0, help="CPU timing per stage, seconds")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--served_s", type=float, default=15.0, help="timed seconds per served cell")
    parser.add_argument("--no_served", action="store_true", help="skip the served measurement")
    parser.add_argument("--quick", action="store_true", help="short timings (smoke test)")
    parser.add_argument("--report_only", action="store_true", help="only re-print the tables from the JSON")
    parser.add_argument("--server_args", default="", help="more server flags")
    parser.add_argument("--startup_timeout_s", type=float, default=600.0)
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR)
    parser.add_argument("--out", type=Path, default=None, help="JSON (default OUT_DIR/pipeline.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.min_time_s, args.served_s = 0.05, 2.0
    return args


STAGES = {"parse": "parse", "base64": "base64", "decode": "decode", "exif_mode": "exif+mode",
          "resize": "resize", "assembly": "assembly", "post": "post", "encode": "encode"}  # fmt: skip


def stages_markdown(data: dict[str, Any]) -> str:
    """CPU ms per image of each stage, full-size decode."""
    rows = []
    for name, r in data["images"].items():
        c = r["cpu_ms"]
        rows.append([name, r["bytes"] // 1024, *(c[k] for k in STAGES), c["pipeline"], c["resize_tf"],
                     c.get("base64_tolerant")])  # fmt: skip
    return fmt_table(["image", "KiB", *STAGES.values(), "pipeline", "resize (TF)", "base64 (tolerant)"], rows)


def per_core_markdown(data: dict[str, Any]) -> str:
    """Per-core images/s in process against the bare Pillow decode + resize, without and with draft."""
    rows = []
    for name, r in data["images"].items():
        c = r["cpu_ms"]
        rows.append([
            name, 1e3 / c["pipeline"], 1e3 / c["bare"], c["bare"] / c["pipeline"],
            1e3 / c["pipeline_draft"], 1e3 / c["bare_draft"], c["bare_draft"] / c["pipeline_draft"],
            c["decode"] / c["decode_draft"],
        ])  # fmt: skip
    table = fmt_table(["image", "pipeline", "bare", "pipeline / bare", "pipeline, draft", "bare, draft",
                       "ratio, draft", "decode speed-up from draft"], rows)  # fmt: skip
    scales = data.get("draft_scales_1080p")
    if not scales:
        return table
    full = scales["1/1"]
    scale_rows = [[scale, ms, full / ms] for scale, ms in scales.items()]
    return (
        table
        + "\n\n1080p JPEG, bare Pillow decode at each DCT scale (the ceiling of draft's decode speed-up):\n\n"
        + fmt_table(["scale", "CPU ms", "speed-up"], scale_rows)
    )


def served_markdown(data: dict[str, Any]) -> str:
    """Served 1080p JPEGs: server CPU per image minus the model's, as a per-core rate against the bare."""
    served = data.get("served")
    if not served:
        return "_Not measured in this run (`--no_served`)._"
    rows = []
    for cell in served["runs"]:
        bare = served["bare_cpu_ms_draft" if cell["draft"] else "bare_cpu_ms"]
        for protocol in ("v1", "grpc"):
            p = cell[protocol]
            rate = 1e3 / p["pipeline_cpu_ms_per_image"] if p["pipeline_cpu_ms_per_image"] > 0 else None
            rows.append([protocol, "on" if cell["draft"] else "off", p["images_per_s"],
                         p["server_cpu_ms_per_image"], p["model_cpu_ms_per_image"],
                         p["pipeline_cpu_ms_per_image"], rate, 1e3 / bare,
                         rate / (1e3 / bare) if rate else None])  # fmt: skip
    title = f"Demo model, 1080p JPEG, concurrency {served['concurrency']}:"
    return title + "\n\n" + fmt_table(
        ["protocol", "draft", "img/s", "server CPU ms/img", "model ms/img", "pipeline ms/img",
         "per-core img/s", "bare per-core img/s", "served / bare"], rows)  # fmt: skip


def sizing_markdown(data: dict[str, Any]) -> str:
    """CPU cores one H100 needs to stay busy with SSD300: its forward rate / the per-core pipeline rate."""
    rows = []
    for name, r in data["images"].items():
        c = r["cpu_ms"]
        for label, ms in (("full", c["pipeline"]), ("draft", c["pipeline_draft"])):
            if label == "draft" and "JPEG" not in name:
                continue
            rate = 1e3 / ms
            rows.append([f"{name}, {label} (in process)", rate,
                         *(v / rate for v in H100_SSD300_IMAGES_PER_S.values())])  # fmt: skip
    shared = ("assembly", "post", "encode")
    for name, ms in data.get("uint8", {}).items():
        total = ms + sum(data["images"]["1080p JPEG"]["cpu_ms"][k] for k in shared)
        rate = 1e3 / total
        rows.append([f"UINT8 tensor {name} (in process)", rate,
                     *(v / rate for v in H100_SSD300_IMAGES_PER_S.values())])  # fmt: skip
    for cell in (data.get("served") or {}).get("runs", []):
        for protocol in ("v1", "grpc"):
            ms = cell[protocol]["pipeline_cpu_ms_per_image"]
            if ms > 0:
                rate = 1e3 / ms
                rows.append([f"1080p JPEG, {'draft' if cell['draft'] else 'full'} (served, {protocol})", rate,
                             *(v / rate for v in H100_SSD300_IMAGES_PER_S.values())])  # fmt: skip
    gpu = [f"cores, {k} ({v:,.0f} img/s)" for k, v in H100_SSD300_IMAGES_PER_S.items()]
    return fmt_table(["image, decode", "per-core img/s", *gpu], rows)


def print_tables(data: dict[str, Any]) -> None:
    print("\nCPU ms per image, one core (full-size decode)")
    print(stages_markdown(data))
    print("\nPer-core images/s: pipeline (in process) vs bare Pillow decode + resize")
    print(per_core_markdown(data))
    print("\nServed (server CPU per image)")
    print(served_markdown(data))
    print("\nCPU cores to keep one H100 busy with SSD300 (H100 rate / per-core pipeline rate)")
    print(sizing_markdown(data))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or args.out_dir / "pipeline.json"
    if args.report_only:
        data = json.loads(out.read_text())
        print_tables(data)
        return 0
    from predictor.ssd import Detector

    path, source = model_dir("demo", args.out_dir)
    detector = Detector.from_dir(str(path), max_batch_size=max(BATCH, args.concurrency))
    data: dict[str, Any] = {"machine": machine_info(), "settings": vars(args).copy(), "model": source,
                            "input_size": detector.input_size, "images": {}}  # fmt: skip
    for name, fmt, w, h in IMAGES:
        encoded = make_image(w, h, fmt)
        print(f"{name}: {len(encoded) // 1024} KiB ...", flush=True)
        data["images"][name] = {"bytes": len(encoded), "size": [w, h],
                                "cpu_ms": stage_costs(encoded, detector, args.min_time_s)}  # fmt: skip
        write_json(out, data)
    data["uint8"] = uint8_costs(detector, args.min_time_s)
    data["draft_scales_1080p"] = draft_scales(make_image(1920, 1080, "JPEG"), args.min_time_s)
    write_json(out, data)
    if not args.no_served:
        hd = make_image(1920, 1080, "JPEG")
        model_ms = model_cpu_ms(detector, args.min_time_s * 3, args.concurrency)
        costs = data["images"]["1080p JPEG"]["cpu_ms"]
        data["served"] = {
            "concurrency": args.concurrency,
            "model_cpu_ms_per_call": {str(b): ms for b, ms in model_ms.items()},
            "bare_cpu_ms": costs["bare"],
            "bare_cpu_ms_draft": costs["bare_draft"],
            "runs": [],
        }
        for draft in (False, True):
            print(f"served, draft {'on' if draft else 'off'} ...", flush=True)
            data["served"]["runs"].append(served_rate(hd, args, model_ms, draft))
            write_json(out, data)
    print_tables(data)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
