"""TF SavedModel export for TF Serving / Triton users.

Signatures (all outputs padded to ``max_detections``; boxes are pixel ``(xmin, ymin, xmax, ymax)``):

* ``serving_default`` / ``detect_encoded``: ``encoded_images: string [N]`` (JPEG/PNG/BMP/GIF bytes);
* ``detect_images``: ``images: uint8 [N, H, W, 3]`` (one size per batch).

Outputs: ``detection_boxes float32 [N, D, 4]``, ``detection_scores float32 [N, D]``,
``detection_classes int32 [N, D]``, ``num_detections int32 [N]``.
"""

from __future__ import annotations

import os

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
