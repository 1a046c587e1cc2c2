"""The network run by ONNX Runtime on the CPU (``--runtime onnxruntime``).

:class:`OrtDetector` is a :class:`~predictor.ssd.detector.Detector` whose network runs in an ONNX
Runtime session (``CPUExecutionProvider``, all graph optimisations, ops in sequence) on the project's
ONNX export of the network (:func:`predictor.ssd.onnx_export.network_onnx`, mean subtraction
included, open batch dimension), and whose post-processing is the Detector's own TensorFlow function
(:func:`predictor.ssd.postprocess.postprocess`, sized candidates, per-image controls). Everything
else is the Detector's: thresholds, buckets, resize, ``run_batch``'s arguments and outputs, so the
serving batcher and model use it unchanged.

Why not the whole detector's graph (``ssd-export onnx``)? tf2onnx cannot convert the sized
post-processing, so that graph runs NMS on all ``top_k`` candidates: ONNX Runtime ran the demo model's
whole graph as fast as ``Detector.run_batch`` at batch 1 and 4-5x slower at 4 and 8
(bench/RESULTS.md, "TensorFlow vs ONNX Runtime at batch 1-8").

The network is exported at :meth:`OrtDetector.open` (called by :meth:`warmup`, i.e. in the server's
warm-up thread, after the server listens). The only difference from TensorFlow is the float rounding of
ONNX Runtime's kernels (``loc``/``logits`` within ~1e-5): the same detections up to boxes and scores
equal within that, except where two candidates' scores or IoUs are that close to a threshold or to
each other. Calls run the ``n`` real images only (the session's batch dimension is open; no padding
to a bucket); post-processing keeps the Detector's buckets (one trace, bounded shapes).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from predictor.ssd.detector import Detector, pad_controls

log = logging.getLogger(__name__)


def cpu_session(model: str | os.PathLike | bytes, threads: int, spinning: bool = True) -> Any:
    """An ONNX Runtime CPU session (all graph optimisations, ``threads`` intra-op threads, 0: ONNX
    Runtime's choice; ops run in sequence) of a model file or a serialized ``ModelProto``.

    ``spinning=False`` stops idle intra-op threads from busy-waiting for the next op (ONNX Runtime's
    ``session.intra_op.allow_spinning``): a server's decode threads and event loop share the cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OrtDetector(Detector):
    """A Detector whose network runs in ONNX Runtime (see the module docstring).

    Build it with :meth:`from_detector`; :meth:`open` (or :meth:`warmup`) exports and starts the session.
    """

    threads: int
    session: Any
    #: The network runs the ``n`` real images only (post-processing still pads, at a small cost).
    pads_to_bucket = False

    @classmethod
    def from_detector(cls, detector: Detector, threads: int = 0) -> OrtDetector:
        """This runtime around ``detector``: its config, weights, thresholds and buckets; ``threads``:
        ONNX Runtime intra-op threads (0: ONNX Runtime's choice)."""
        new = cls.__new__(cls)
        new.__dict__.update(copy.copy(detector.__dict__))
        new.threads = threads
        new.pads_to_bucket = False  # whatever the detector's pad_batches: the network runs n rows
        new.session = None
        new.trace_count = 0  # its own post-processing traces, not the TensorFlow detector's
        anchors, classes = int(detector.anchors.shape[0]), len(detector.class_names)
        signature = (
            tf.TensorSpec([None, anchors, 4], tf.float32, name="loc"),
            tf.TensorSpec([None, anchors, classes], tf.float32, name="logits"),
            tf.TensorSpec([None, 2], tf.float32, name="image_hw"),
            tf.TensorSpec([None], tf.float32, name="score_threshold"),
            tf.TensorSpec([None], tf.int32, name="max_detections"),
            tf.TensorSpec([None], tf.float32, name="nms_threshold"),
            tf.TensorSpec([None, classes], tf.bool, name="class_mask"),
        )
        new._post = tf.function(new._postprocess, input_signature=signature).get_concrete_function
        new._graph = None
        return new

    def open(self) -> OrtDetector:
        """Export the network and start the session; a second call does nothing."""
        if self.session is not None:
            return self
        import onnxruntime as ort

        from predictor.ssd.onnx_export import network_onnx

        start = time.perf_counter()
        proto = network_onnx(self.model, self.input_size, means=self.config.means)
        self.session = cpu_session(proto.SerializeToString(), self.threads, spinning=False)
        log.info(
            "runtime onnxruntime %s (CPUExecutionProvider, %s intra-op threads): network exported and "
            "loaded in %.1f s; post-processing in TensorFlow",
            ort.__version__,
            self.threads or "default",
            time.perf_counter() - start,
        )
        return self

    def warmup(
        self, buckets: Sequence[int] | None = None, retime_below_s: float = 1.0, retime_runs: int = 3
    ) -> dict[int, float]:
        """Open the session, then :meth:`Detector.warmup` (each bucket run once, and timed)."""
        self.open()
        return super().warmup(buckets, retime_below_s, retime_runs)

    def _run_bucket(self, images, image_hw, thr, caps, nms, mask) -> dict[str, np.ndarray]:
        """At most one bucket of images: the network on the ``n`` real images (no padding), then
        post-processing padded to the bucket like the Detector's."""
        if self.session is None:
            raise RuntimeError("OrtDetector.open() was not called")
        n = len(images)
        if not (isinstance(images, np.ndarray) and images.dtype == np.float32):
            images = self._bucket_images(images, n)
        loc, logits = self.session.run(["loc", "logits"], {"images": images})
        pad = self.bucket_for(n) - n
        if pad:
            loc = np.concatenate([loc, np.zeros((pad, *loc.shape[1:]), np.float32)])
            logits = np.concatenate([logits, np.zeros((pad, *logits.shape[1:]), np.float32)])
        image_hw, thr, caps, nms, mask = pad_controls(pad, image_hw, thr, caps, nms, mask)
        if self._graph is None:
            self._graph = self._post()  # traced once, then called directly (as the Detector does)
        out = self._graph(*map(tf.constant, (loc, logits, image_hw, thr, caps, nms, mask)))
        return {k: v.numpy()[:n] for k, v in out.items()}
