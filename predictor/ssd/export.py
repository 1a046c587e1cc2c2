"""Exports for TF Serving / Triton users: a TF SavedModel, the whole detector as ONNX, a Triton model
repository (the ONNX ones: :mod:`predictor.ssd.onnx_export`).

Command line (``ssd-export`` or ``python -m predictor.ssd.export``)::

    ssd-export onnx --model_dir DIR --out detector.onnx
    ssd-export triton --model_dir DIR --out model_repository [--model_name ssd] [--max_batch_size 32]
    ssd-export saved_model --model_dir DIR --out saved_model_dir

``--model_dir`` defaults to the shipped demo model; ``--top_k`` / ``--max_detections`` override the
model's (they fix the graph's sizes), the thresholds are the ONNX graph's inputs.

SavedModel

Signatures (all outputs padded to ``max_detections``; boxes are pixel ``(xmin, ymin, xmax, ymax)``):

* ``serving_default`` / ``detect_encoded``: ``encoded_images: string [N]`` (JPEG/PNG/BMP/GIF bytes);
* ``detect_images``: ``images: uint8 [N, H, W, 3]`` (one size per batch).

Outputs: ``detection_boxes float32 [N, D, 4]``, ``detection_scores float32 [N, D]``,
``detection_classes int32 [N, D]``, ``num_detections int32 [N]``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import tensorflow as tf

from predictor.ssd.detector import Detector
from predictor.ssd.preprocess import resize_warp
from predictor.ssd.weights import write_version


class _ServingModule(tf.Module):
    def __init__(self, detector: Detector) -> None:
        super().__init__(name="ssd_serving")
        self.model = detector.model
        self._detector = detector
        self.class_names = tf.constant(list(detector.class_names))

    def _run(self, resized: tf.Tensor, image_hw: tf.Tensor) -> dict[str, tf.Tensor]:
        d = self._detector
        n = tf.shape(resized)[0]
        out = d._infer(
            resized,
            tf.cast(image_hw, tf.float32),
            tf.fill([n], tf.constant(d.score_threshold, tf.float32)),
            tf.fill([n], tf.constant(d.max_detections, tf.int32)),
            tf.fill([n], tf.constant(d.nms_threshold, tf.float32)),
            tf.ones([n, len(d.class_names)], tf.bool),
        )
        return {
            "detection_boxes": out["boxes"],
            "detection_scores": out["scores"],
            "detection_classes": out["classes"],
            "num_detections": out["num_detections"],
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="encoded_images")])
    def detect_encoded(self, encoded_images: tf.Tensor) -> dict[str, tf.Tensor]:
        size = self._detector.input_size

        def decode_one(data: tf.Tensor):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            return resize_warp(image, size), tf.shape(image)[:2]

        resized, hw = tf.map_fn(
            decode_one,
            encoded_images,
            fn_output_signature=(
                tf.TensorSpec([size, size, 3], tf.float32),
                tf.TensorSpec([2], tf.int32),
            ),
        )
        return self._run(resized, hw)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def detect_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        hw = tf.tile(tf.shape(images)[None, 1:3], [tf.shape(images)[0], 1])
        return self._run(resize_warp(images, self._detector.input_size), hw)


def export_saved_model(detector: Detector, path: str | os.PathLike) -> str:
    """Write a SavedModel of ``detector`` (weights, post-processing and thresholds baked in), with the
    detector's model version in a ``VERSION`` file beside ``saved_model.pb``."""
    module = _ServingModule(detector)
    signatures = {
        "serving_default": module.detect_encoded,
        "detect_encoded": module.detect_encoded,
        "detect_images": module.detect_images,
    }
    tf.saved_model.save(module, str(path), signatures=signatures)
    write_version(path, detector.version)
    return str(path)


FORMATS = ("onnx", "triton", "saved_model")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssd-export", description="Export an SSD model: ONNX, Triton, SavedModel"
    )
    p.add_argument("format", choices=FORMATS, help="onnx: one .onnx file; triton: a model repository")
    p.add_argument("--model_dir", default=None, help="project model directory or balancap checkpoint "
                   "(default: the shipped demo model)")  # fmt: skip
    p.add_argument("--out", required=True, help="the .onnx file, the repository, or the SavedModel folder")
    p.add_argument("--top_k", type=int, default=None, help="candidates before NMS (default: the model's)")
    p.add_argument(
        "--max_detections", type=int, default=None, help="output rows per image (default: the model's)"
    )
    p.add_argument("--model_name", default="ssd", help="triton: the model's name in the repository")
    p.add_argument("--max_batch_size", type=int, default=32, help="triton: largest batch Triton forms")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from predictor.models import DEMO_MODEL_DIR

    detector = Detector.from_dir(
        str(args.model_dir or DEMO_MODEL_DIR), top_k=args.top_k, max_detections=args.max_detections
    )
    if args.format == "saved_model":
        print(f"wrote SavedModel {export_saved_model(detector, args.out)}")
        return 0
    from predictor.ssd import onnx_export

    if args.format == "onnx":
        done = onnx_export.export_onnx(detector, args.out)
    else:
        done = onnx_export.write_triton_repository(
            detector, args.out, args.model_name, max_batch_size=args.max_batch_size
        )
    print(f"wrote {done.path} ({done.bytes / 1e6:.1f} MB, opset {done.opset}, {done.nodes} nodes)")
    if args.format == "triton":
        print(f"serve it: tritonserver --model-repository={os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
