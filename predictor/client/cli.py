"""``ssd-detect``: send images to the SSD predictor over KServe V1, V2 REST or V2 gRPC.

Usage (see docs/clients.md)::

    ssd-detect --url http://localhost:8080 --model ssd photo.jpg photos/ > detections.jsonl
    ssd-detect --protocol grpc --url localhost:8081 --batch-size 8 --concurrency 4 --draw out/ photos/
    ssd-detect --url http://$INGRESS --isvc ssd --namespace demo photo.jpg   # Host header from the isvc

Output: JSON Lines, one object per image in input order (``model_version``: the model version that answered),
``{"file": ..., "width": W, "height": H, "detections": [{label, class_id, score, xmin, ymin, xmax, ymax}]}``
(``{"file": ..., "width": ..., "height": ..., "error": "..."}`` for an image the server refused).
Every protocol's answer is normalised to the V1 detection dicts: scores rounded to 4 decimals and box
coordinates (pixels of the EXIF-oriented image) to 2, as the V1 endpoint does.

``ssd-detect compare --url A --url B PATH...`` compares two predictors' detections
(:mod:`predictor.client.compare`).

Exit status: 0 when every image was answered, 1 when some were not (each error is printed on stderr
as it happens; the other images are still sent), 2 for usage or configuration errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from predictor._argtypes import fraction, positive_int
from predictor.client.detect import ImageResult, RunOptions, run_detection
from predictor.client.errors import ClientError
from predictor.client.files import IMAGE_EXTENSIONS, InputImage, collect_images
from predictor.client.isvc import resolve_isvc_url
from predictor.client.transports import (
    DEFAULT_GRPC_URL,
    DEFAULT_MODEL,
    DEFAULT_REST_URL,
    PROTOCOLS,
    DetectParams,
    Endpoint,
    Transport,
    make_transport,
)


def endpoint_from_args(args: argparse.Namespace) -> Endpoint:
    """``--url``/``--host-header``/``--isvc`` -> where to send requests. With ``--isvc`` and ``--url``,
    requests go to ``--url`` (an ingress) with the InferenceService's host name as Host header."""
    url, host_header = args.url, args.host_header
    if args.isvc:
        isvc = resolve_isvc_url(
            args.isvc, args.namespace, kubeconfig=args.kubeconfig, context=args.context, timeout=args.timeout
        )
        if url:
            host_header = host_header or urlsplit(isvc).netloc
        else:
            url = isvc
    if not url:
        url = DEFAULT_GRPC_URL if args.protocol == "grpc" else DEFAULT_REST_URL
    return Endpoint(url, args.model, host_header, args.timeout, token=read_token(args.token_file))


#: Environment variable holding the bearer token when no --token-file is given.
TOKEN_ENV = "SSD_DETECT_TOKEN"


def read_token(path: str | None) -> str | None:
    """The bearer token: the first non-empty line of ``path``, else ``$SSD_DETECT_TOKEN``, else None.

    Raises:
      ClientError: the file cannot be read or holds no token.
    """
    if path is None:
        return os.environ.get(TOKEN_ENV, "").strip() or None
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    except OSError as e:
        raise ClientError(f"--token-file: cannot read {path}: {e.strerror or e}") from None
    if not lines:
        raise ClientError(f"--token-file: {path} holds no token")
    return lines[0]


def _timeout(raw: str) -> float | None:
    value = float(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {raw}")
    return value or None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssd-detect",
        description="Detect objects in images with an SSD predictor served by KServe (V1, V2 REST or "
        "gRPC). Prints JSON Lines: one object per image, in input order.",
        epilog="Exit status: 0 all images answered, 1 some failed (errors on stderr), 2 usage errors. "
        "`ssd-detect compare --help`: compare two predictors' detections.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="PATH",
        help="image files and/or folders (searched recursively for "
        + ", ".join(sorted(IMAGE_EXTENSIONS))
        + ")",
    )
    srv = p.add_argument_group("server")
    srv.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="v1",
        help="v1 (:predict), v2 (REST /infer) or grpc (V2 ModelInfer) (default: v1)",
    )
    srv.add_argument(
        "--url",
        help=f"server URL: http(s)://host:port for v1/v2 (default {DEFAULT_REST_URL}), "
        f"host:port for grpc (default {DEFAULT_GRPC_URL}; https://host for TLS)",
    )
    srv.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default: {DEFAULT_MODEL})")
    srv.add_argument(
        "--host-header", metavar="HOST", help="Host header for an ingress gateway (gRPC: the :authority)"
    )
    srv.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"send the token in FILE as 'Authorization: Bearer <token>' (server --auth_token_file); "
        f"default: ${TOKEN_ENV} when set. No --token: a command line is visible to every local user",
    )
    srv.add_argument(
        "--timeout",
        type=_timeout,
        default=60.0,
        metavar="SECONDS",
        help="per-request time limit, 0 for none (default: 60)",
    )
    srv.add_argument(
        "--retries",
        type=int,
        default=2,
        help="retries of a request answered 429/502/503/504, UNAVAILABLE or not at all (default: 2)",
    )
    kube = p.add_argument_group("InferenceService (reads status.url with the Kubernetes API)")
    kube.add_argument(
        "--isvc",
        metavar="NAME",
        help="take the URL from this InferenceService; with --url, use its host as Host header",
    )
    kube.add_argument("--namespace", "-n", help="its namespace (default: the kube context's)")
    kube.add_argument(
        "--kubeconfig", help="kube config file (default: $KUBECONFIG, ~/.kube/config, in-cluster)"
    )
    kube.add_argument("--context", help="kube config context (default: the current one)")
    det = p.add_argument_group("detection")
    det.add_argument(
        "--score-threshold",
        type=fraction,
        metavar="S",
        help="lowest score returned, in [0, 1] (default: the server's)",
    )
    det.add_argument(
        "--max-detections",
        type=positive_int,
        metavar="N",
        help="most detections per image (default: the server's)",
    )
    det.add_argument(
        "--nms-threshold",
        type=fraction,
        metavar="IOU",
        help="IoU at which a box of the same class is suppressed, in [0, 1] (default: the server's)",
    )
    det.add_argument(
        "--classes",
        metavar="NAMES",
        help="only these classes, names or ids separated by commas, e.g. circle,star (default: all)",
    )
    run = p.add_argument_group("sending and output")
    run.add_argument("--batch-size", type=positive_int, default=1, help="images per request (default: 1)")
    run.add_argument("--concurrency", type=positive_int, default=1, help="requests in flight (default: 1)")
    run.add_argument("--output", "-o", metavar="FILE", help="write the JSON Lines here instead of stdout")
    run.add_argument(
        "--draw",
        metavar="DIR",
        help="write copies of the images with the boxes drawn into DIR (same relative names; "
        "JPEG stays JPEG, other formats become PNG)",
    )
    run.add_argument(
        "--downscale",
        type=positive_int,
        metavar="SIDE",
        help="shrink images whose shorter side is over SIDE pixels to SIDE before sending (antialiased, "
        "EXIF orientation applied, JPEG q90): less upload and server CPU; boxes are still in pixels of "
        "the original file. 600 suits SSD300 (see docs/clients.md for the measured effect)",
    )
    run.add_argument(
        "--uint8",
        action="store_true",
        help="decode the images here and send their pixels as a V2 UINT8 [N, H, W, 3] tensor (binary "
        "tensor extension / gRPC raw contents; v2 and grpc only): no decoding on the server, more bytes "
        "on the wire",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when several images and stderr is a terminal)",
    )
    return p


def _open_output(path: str | None) -> IO[str]:
    if path is None or path == "-":
        return sys.stdout
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w", encoding="utf-8")


def _progress_bar(total: int, enabled: bool | None) -> Any:
    from tqdm import tqdm

    show = enabled if enabled is not None else (total > 1 and sys.stderr.isatty())
    return tqdm(total=total, unit="img", file=sys.stderr, disable=not show, dynamic_ncols=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ssd-detect`` / ``python -m predictor.client.cli``; returns the exit status.
    ``ssd-detect compare ...`` runs :func:`predictor.client.compare.main` (a file named ``compare`` is
    ``./compare``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from predictor.client import compare

        return compare.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        images = collect_images(args.inputs)
        endpoint = endpoint_from_args(args)
        transport = make_transport(args.protocol, endpoint, args.concurrency, pixels=args.uint8)
    except ClientError as e:
        print(f"ssd-detect: error: {e}", file=sys.stderr)
        return 2
    options = RunOptions(
        DetectParams(args.score_threshold, args.max_detections, args.nms_threshold, args.classes),
        args.batch_size,
        max(0, args.retries),
        Path(args.draw) if args.draw else None,
        args.downscale,
    )
    failed = _run(transport, images, options, args)
    if failed:
        print(f"ssd-detect: {failed} of {len(images)} images failed", file=sys.stderr)
    return 1 if failed else 0


def _run(
    transport: Transport, images: list[InputImage], options: RunOptions, args: argparse.Namespace
) -> int:
    """Send everything, write the results; returns how many images failed."""
    failed = 0
    out = _open_output(args.output)
    bar = _progress_bar(len(images), args.progress)

    def report(result: ImageResult) -> None:
        nonlocal failed
        bar.update(1)
        if result.error is not None:
            failed += 1
            bar.write(f"ssd-detect: error: {result.file}: {result.error}", file=sys.stderr)

    try:
        for result in run_detection(transport, images, options, args.concurrency, report):
            out.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
            out.flush()
    finally:
        bar.close()
        transport.close()
        if out is not sys.stdout:
            out.close()
    return failed


if __name__ == "__main__":
    sys.exit(main())
