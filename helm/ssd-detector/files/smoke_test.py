"""`helm test` check: post a real image to the predictor's V1 API and expect 200 with a predictions list.

Standard library only, so it runs in the predictor image or any image with python3. The image is a PNG
drawn here (a sky, ground and a few solid shapes), encoded as base64 in the KServe V1 body
``{"instances": [{"b64": ...}]}``. While the service warms up (scale from zero, model loading) the
request is retried on connection errors and 502/503/504 until --timeout seconds have passed.
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib

RETRY_STATUSES = (502, 503, 504)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def make_png(width: int = 320, height: int = 240) -> bytes:
    """An RGB PNG of ``width`` x ``height``: sky gradient, ground, a red box and a blue disc."""
    rows = []
    for y in range(height):
        row = bytearray([0])  # filter type 0 (None) for this scanline
        for x in range(width):
            if (x - 230) ** 2 + (y - 150) ** 2 < 35**2:
                pixel = (30, 60, 200)
            elif 40 <= x < 140 and 90 <= y < 190:
                pixel = (200, 30, 30)
            elif y >= height * 2 // 3:
                pixel = (70, 140, 60)
            else:
                pixel = (120 + y // 4, 170 + y // 8, 235)
            row += bytes(pixel)
        rows.append(bytes(row))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 6))
        + _png_chunk(b"IEND", b"")
    )


def check_response(body: bytes) -> str | None:
    """None when ``body`` is a V1 answer with one list of detections for the one image, else why not."""
    try:
        payload = json.loads(body)
    except ValueError as e:
        return f"response is not JSON: {e}"
    predictions = payload.get("predictions") if isinstance(payload, dict) else None
    if not isinstance(predictions, list) or len(predictions) != 1:
        return f"expected 'predictions' to be a list with one entry, got {str(payload)[:300]}"
    detections = predictions[0]
    if not isinstance(detections, list):
        return f"expected the entry for the image to be a list of detections, got {str(detections)[:300]}"
    for det in detections:
        if not isinstance(det, dict) or not {"label", "score"} <= det.keys():
            return f"detection without label/score: {str(det)[:300]}"
    return None


def predict(
    url: str, model: str, image: bytes, host_header: str, timeout: float, token: str = ""
) -> tuple[int, bytes]:
    body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode("ascii")}]}).encode()
    headers = {"Content-Type": "application/json"}
    if host_header:
        headers["Host"] = host_header
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{url.rstrip('/')}/v1/models/{model}:predict", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="predictor base URL, e.g. http://ssd-predictor.ns.svc")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--host-header", default="", help="Host header (when going through an ingress)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to keep retrying")
    parser.add_argument("--token-file", default="", help="bearer token file (the server's --auth_token_file)")
    parser.add_argument("--retry-interval", type=float, default=5, help="seconds between tries")
    args = parser.parse_args(argv)

    image = make_png()
    token = ""
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            token = next((line.strip() for line in f if line.strip()), "")
    deadline = time.monotonic() + args.timeout
    attempt = 0
    while True:
        attempt += 1
        remaining = max(1.0, deadline - time.monotonic())
        try:
            status, body = predict(
                args.url, args.model, image, args.host_header, timeout=min(120, remaining), token=token
            )
        except (OSError, urllib.error.URLError) as e:
            status, body = 0, str(e).encode()
        if status == 200:
            problem = check_response(body)
            if problem is None:
                count = len(json.loads(body)["predictions"][0])
                print(f"ok: {args.url} model {args.model}: 200, {count} detections (attempt {attempt})")
                return 0
            print(f"FAIL: 200 but {problem}", file=sys.stderr)
            return 1
        retryable = status == 0 or status in RETRY_STATUSES
        print(f"attempt {attempt}: status {status or 'no connection'}: {body[:200]!r}", file=sys.stderr)
        if not retryable or time.monotonic() + args.retry_interval > deadline:
            print(f"FAIL: no 200 from {args.url} for model {args.model}", file=sys.stderr)
            return 1
        time.sleep(args.retry_interval)


if __name__ == "__main__":
    sys.exit(main())
