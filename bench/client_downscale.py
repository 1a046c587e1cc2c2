"""``ssd-detect --downscale SIDE``: its effect on detections, upload bytes and server CPU per image.

Held-out shapes images (``EVAL_SEED``) are upscaled so their shorter side is ``--short_side`` (1080:
1080p-like) and saved as JPEG q90, ground-truth boxes scaled alike. For each mode (sent as they are, and
``--downscale`` at each ``--sides``) every image goes through the client's own
:func:`predictor.client.files.downscale_image`, is POSTed to a real ``python -m predictor`` server (the demo
model) on loopback as V1 JSON with ``score_threshold`` 0.01, and its boxes are mapped back with
:func:`predictor.client.files.scale_detections`. Reported per mode: COCO mAP@[.5:.95] and AP@0.5 against the
original-pixel ground truth, mean request body bytes, and the server process's CPU ms per image
(``/proc/<pid>/stat`` via psutil; the model's share is the same in every mode, 300x300 input).

``python -m bench.client_downscale [--images 100] [--sides 600,300]`` -> table + JSON.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    OUT_DIR,
    fmt_table,
    machine_info,
    model_dir,
    parse_ints,
    start_bench_server,
    upscaled_jpeg,
    write_json,
)
from predictor.protocol.wire import MODEL_NAME


def run_mode(server: Any, jpegs: list[bytes], side: int | None) -> tuple[list[list[dict]], dict[str, float]]:
    """Send every image (downscaled when ``side``); detections in original pixels, and the costs."""
    import httpx

    from predictor.client.files import downscale_image, scale_detections

    url = f"http://127.0.0.1:{server.http_port}/v1/models/{MODEL_NAME}:predict"
    answers: list[list[dict]] = []
    body_bytes = 0
    client_cpu = 0.0
    with httpx.Client(timeout=120) as http:
        cpu0 = server.cpu_seconds()
        for data in jpegs:
            t0 = time.process_time()
            reduced = downscale_image(data, side) if side else None
            payload, scale = reduced if reduced else (data, (1.0, 1.0))
            body = json.dumps({"instances": [{"b64": base64.b64encode(payload).decode()}],
                               "parameters": {"score_threshold": 0.01}}).encode()  # fmt: skip
            client_cpu += time.process_time() - t0
            body_bytes += len(body)
            r = http.post(url, content=body, headers={"content-type": "application/json"})
            r.raise_for_status()
            answers.append(scale_detections(r.json()["predictions"][0], *scale))
        server_cpu = server.cpu_seconds() - cpu0
    n = len(jpegs)
    return answers, {
        "body_kib": body_bytes / n / 1024,
        "server_cpu_ms_per_image": 1e3 * server_cpu / n,
        "client_cpu_ms_per_image": 1e3 * client_cpu / n,
    }


def markdown(data: dict[str, Any]) -> str:
    """One row per client mode: COCO mAP, AP@0.5, request body size, server and client CPU per image."""
    settings = data["settings"]
    keys = ["mAP", "AP50", "body_kib", "server_cpu_ms_per_image", "client_cpu_ms_per_image"]
    rows = [
        [f"`{k}`" if k.startswith("--") else k, *(m[key] for key in keys)] for k, m in data["modes"].items()
    ]
    headers = [
        "client",
        "mAP@[.5:.95]",
        "AP@0.5",
        "request body KiB",
        "server CPU ms/img",
        "client CPU ms/img",
    ]
    return (
        f"Demo model served on loopback, {settings['images']} held-out images upscaled to a "
        f"{settings['short_side']} px shorter side (JPEG q90), V1, one by one:\n\n" + fmt_table(headers, rows)
    )


def main(argv: list[str] | None = None) -> int:
    from predictor.datasets.coco import samples_to_coco
    from predictor.datasets.shapes import CLASS_NAMES, EVAL_SEED, generate_sample
    from predictor.tools.coco_eval import coco_evaluate, detections_to_coco

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--short_side", type=int, default=1080)
    parser.add_argument("--sides", type=parse_ints, default=[600, 300], help="--downscale values to try")
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)

    samples, jpegs = [], []
    for i in range(args.images):
        sample = generate_sample(EVAL_SEED, i)
        data, scale = upscaled_jpeg(sample.image, args.short_side)
        jpegs.append(data)
        samples.append(sample._replace(boxes=np.asarray(sample.boxes, np.float32) * scale))
    gt = samples_to_coco(samples, CLASS_NAMES, image_ids=list(range(len(samples))))
    path, source = model_dir("demo", args.out_dir)
    server = start_bench_server(path, args.out_dir / "client_downscale_server.log", [], 600)
    data: dict[str, Any] = {"machine": machine_info(), "settings": vars(args).copy(), "model": source,
                            "modes": {}}  # fmt: skip
    try:
        run_mode(server, jpegs[:4], None)  # warm
        for side in [None, *args.sides]:
            answers, costs = run_mode(server, jpegs, side)
            coco = []
            for i, dets in enumerate(answers):
                boxes = np.asarray([[d["xmin"], d["ymin"], d["xmax"], d["ymax"]] for d in dets], np.float32)
                scores = np.asarray([d["score"] for d in dets], np.float32)
                classes = np.asarray([d["class_id"] for d in dets], np.int32)
                coco += detections_to_coco(i, boxes.reshape(-1, 4), scores, classes)
            metrics = coco_evaluate(gt, coco, class_names=CLASS_NAMES)
            name = f"--downscale {side}" if side else "as is"
            data["modes"][name] = {**costs, "mAP": metrics["mAP"], "AP50": metrics["AP50"]}
            print(name, data["modes"][name], flush=True)
            write_json(args.out_dir / "client_downscale.json", data)
    finally:
        server.terminate()
    print("\n" + markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
