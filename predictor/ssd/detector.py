"""The compiled SSD inference function: pre-resized images in, detections in original pixels out.

``Detector`` wraps a network, its anchors and the batched post-processing in one ``tf.function``
(optionally XLA-compiled). The function is traced once, its batch dimension left open; batches are
padded to a small set of bucket sizes, so XLA and the kernels see a bounded set of shapes, all of them
run once by :meth:`Detector.warmup` before serving (``pad_batches=False``: each call runs at its own
size, no padded image computed; on a CPU without XLA a size's first call costs no more than the next,
bench/padding.py). Buckets are this module's business alone: callers (the serving batcher included)
pass their ``n`` real images and get ``n`` rows back.

Three lines from an image file to detections (balancap checkpoint or project model directory)::

    import numpy as np, PIL.Image
    from predictor.ssd import Detector
    print(Detector.from_dir("ckpt_dir").detect([np.asarray(PIL.Image.open("dog.jpg").convert("RGB"))])[0])
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from predictor.ssd.anchors import generate_anchors
from predictor.ssd.config import SSDConfig
from predictor.ssd.network import build_network
from predictor.ssd.postprocess import postprocess
from predictor.ssd.preprocess import resize_warp_uint8, subtract_means
from predictor.ssd.weights import UNVERSIONED

log = logging.getLogger(__name__)

DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


class ImageDetections(NamedTuple):
    """Detections of one image in its pixels, trimmed to its ``n`` detections, sorted by descending
    score (what :meth:`Detector.detect` returns; the padded batch: ``run_batch``'s dict).

    Attributes:
      boxes: float32 ``[n, 4]`` pixel ``(xmin, ymin, xmax, ymax)``, ``xmax > xmin``, ``ymax > ymin``.
      scores: float32 ``[n]``.
      classes: int32 ``[n]`` class ids (``>= 1``).
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def configure_devices(memory_growth: bool = True) -> list[str]:
    """Turn on GPU memory growth (TF otherwise grabs all GPU memory); return the devices' names."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised
            tf.config.experimental.set_memory_growth(gpu, memory_growth)
    names = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        names.append(f"GPU {details.get('device_name', gpu.name)}")
    return names or ["CPU"]


def uses_gpu() -> bool:
    """Whether TensorFlow will place ops on a GPU: its *logical* GPUs, not the physical ones it lists
    (a GPU hidden with ``tf.config.set_visible_devices``, or one TensorFlow does not use, e.g. below its
    minimum compute capability, is listed as physical but runs nothing). Initialises TensorFlow's
    devices: call it after :func:`configure_devices`."""
    return bool(tf.config.list_logical_devices("GPU"))


LIBDEVICE = Path("nvvm/libdevice/libdevice.10.bc")


def find_libdevice(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The CUDA directory holding ``nvvm/libdevice/libdevice.10.bc``, which XLA needs to compile for a
    GPU, or None. Looked for in ``--xla_gpu_cuda_data_dir`` of ``XLA_FLAGS``, ``CUDA_HOME``/``CUDA_PATH``,
    ``/usr/local/cuda*`` and the nvidia-cuda-nvcc wheel (``site-packages/nvidia/cuda_nvcc``)."""
    flag = re.search(r"--xla_gpu_cuda_data_dir=(\S+)", environ.get("XLA_FLAGS", ""))
    candidates = [Path(flag[1])] if flag else []
    candidates += [Path(environ[k]) for k in ("CUDA_HOME", "CUDA_PATH") if environ.get(k)]
    candidates += sorted(Path("/usr/local").glob("cuda*"))
    candidates += [Path(p) / "nvidia" / "cuda_nvcc" for p in sys.path if p]
    return next((c for c in candidates if (c / LIBDEVICE).is_file()), None)


def buckets_up_to(max_batch_size: int, base: Sequence[int] = DEFAULT_BUCKETS) -> tuple[int, ...]:
    """Bucket sizes not larger than ``max_batch_size``, always ending with ``max_batch_size`` itself."""
    sizes = sorted({b for b in base if b < max_batch_size} | {max_batch_size})
    return tuple(sizes)


class Detector:
    """SSD network + anchors + in-graph post-processing, compiled per batch bucket.

    Args:
      config: the architecture (its thresholds are the defaults).
      model: the Keras network built from ``config``; a new one with random weights when None.
      score_threshold, nms_threshold, top_k, max_detections: override the config's defaults.
      xla: compile with XLA (``jit_compile=True``).
      max_batch_size: largest batch per model call; bigger inputs are split.
      version: the model version served (:func:`predictor.ssd.weights.model_version` of the model
        directory); :data:`~predictor.ssd.weights.UNVERSIONED` when None.
      pad_batches: run a call of ``n`` images as its bucket (:meth:`bucket_for`), padding included
        (True), or at exactly ``n`` rows (False: no padded image computed; a size not run before pays
        the backend's one-time costs for that shape at its first call, which warm-up runs only for
        the buckets). XLA compiles an executable per batch size, so it needs the padding.
    """

    def __init__(
        self,
        config: SSDConfig,
        model: keras.Model | None = None,
        *,
        score_threshold: float | None = None,
        nms_threshold: float | None = None,
        top_k: int | None = None,
        max_detections: int | None = None,
        xla: bool = False,
        max_batch_size: int = 32,
        version: str | None = None,
        pad_batches: bool = True,
    ) -> None:
        if xla and not pad_batches:
            raise ValueError("xla compiles one executable per batch size: it needs pad_batches")
        self.config = config
        self.pads_to_bucket = pad_batches
        self.version = version or UNVERSIONED
        self.model = model if model is not None else build_network(config)
        self.score_threshold = config.score_threshold if score_threshold is None else float(score_threshold)
        self.nms_threshold = config.nms_threshold if nms_threshold is None else float(nms_threshold)
        self.top_k = config.top_k if top_k is None else int(top_k)
        self.max_detections = config.max_detections if max_detections is None else int(max_detections)
        self.xla = xla
        if xla and uses_gpu() and find_libdevice() is None:
            raise RuntimeError(
                f"--xla on a GPU needs CUDA's {LIBDEVICE} (and ptxas), found nowhere XLA looks: install "
                "nvidia-cuda-nvcc-cu12 (the GPU image has it), set XLA_FLAGS=--xla_gpu_cuda_data_dir=<dir>, "
                "or serve without --xla"
            )
        # None: post-processing sizes its candidates (predictor.ssd.postprocess.CANDIDATE_SLOTS); the
        # ONNX export sets () (tf2onnx cannot convert the branches).
        self.candidate_slots: tuple[int, ...] | None = None
        self.buckets = buckets_up_to(max_batch_size)
        self.anchors = tf.constant(generate_anchors(config))
        self.trace_count = 0
        # One trace serves every bucket: the batch dimension is left open (post-processing reads it
        # with tf.shape), so warm-up pays a single trace and graph optimisation instead of one per
        # bucket. XLA still compiles one executable per concrete batch size, at the bucket's first run.
        s = config.input_size
        signature = (
            tf.TensorSpec([None, s, s, 3], tf.float32, name="images"),
            tf.TensorSpec([None, 2], tf.float32, name="image_hw"),
            tf.TensorSpec([None], tf.float32, name="score_threshold"),
            tf.TensorSpec([None], tf.int32, name="max_detections"),
            tf.TensorSpec([None], tf.float32, name="nms_threshold"),
            tf.TensorSpec([None, len(config.class_names)], tf.bool, name="class_mask"),
        )
        self._fn = tf.function(self._infer, input_signature=signature, jit_compile=xla)
        # Its one concrete function, traced at the first call and then called directly, without
        # tf.function's own call (argument binding, signature check, cache lookup): the demo network
        # ran 12-16% faster so at batch 1-8 (bench/RESULTS.md, "TensorFlow vs ONNX Runtime at batch
        # 1-8"). XLA is kept (_XlaMustCompile is an attribute of the traced function).
        self._graph: Callable[..., dict[str, tf.Tensor]] | None = None

    @classmethod
    def from_dir(cls, path: str, **kwargs) -> Detector:
        """Load a project model directory or a balancap TF1 checkpoint (see :mod:`predictor.ssd.weights`)."""
        from predictor.ssd.weights import load_model, model_version

        dtype = kwargs.pop("dtype", "float32")
        config, model = load_model(path, dtype=dtype)
        version = model_version(path)
        return cls(config, model, version=version, **kwargs)

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    def _infer(self, images, image_hw, score_threshold, max_detections, nms_threshold, class_mask):
        out = self.model(subtract_means(images, self.config.means), training=False)
        return self._postprocess(
            out["loc"], out["logits"], image_hw, score_threshold, max_detections, nms_threshold, class_mask
        )

    def _postprocess(self, loc, logits, image_hw, score_threshold, max_detections, nms_threshold, class_mask):
        """The network's ``loc`` / ``logits`` -> detections (dict of tensors), with this detector's anchors,
        top-k, caps and candidate slots; traced inside :meth:`_infer` (and by ``OrtDetector`` alone)."""
        self.trace_count += 1  # Python side effect: runs only while tracing
        det = postprocess(
            loc,
            logits,
            self.anchors,
            image_hw,
            score_threshold,
            max_detections,
            prior_scaling=self.config.prior_scaling,
            nms_threshold=nms_threshold,
            class_mask=class_mask,
            top_k=self.top_k,
            max_detections=self.max_detections,
            candidate_slots=self.candidate_slots,
        )
        return det._asdict()

    #: Whether a call of ``n`` images computes its whole bucket (:meth:`bucket_for`), padding included:
    #: the network runs on the padded batch (``pad_batches``). The batcher avoids calls that would pad
    #: only where it does.
    pads_to_bucket: bool = True

    def bucket_for(self, n: int) -> int:
        """Smallest bucket holding ``n`` images (``n <= max bucket``)."""
        return self.buckets[bisect.bisect_left(self.buckets, n)]

    def chunks(self, n: int) -> list[slice]:
        """The slices of a call of ``n`` images that :meth:`run_batch` runs one at a time: at most the
        largest bucket each."""
        top = self.buckets[-1]
        return [slice(start, min(start + top, n)) for start in range(0, n, top)]

    def _chunk_rows(self, n: int) -> int:
        """Rows the network computes for one chunk of ``n <= max bucket`` images: its bucket when
        ``pads_to_bucket``, else ``n``."""
        return self.bucket_for(n) if self.pads_to_bucket else n

    def rows_computed(self, n: int) -> int:
        """Images the network computes for a :meth:`run_batch` call of ``n`` images, padding included
        (the ``ssd_computed_images_total`` counter): each chunk's bucket when ``pads_to_bucket``
        (3 -> 4; 40 with buckets up to 32 -> 32 + 8), else ``n``."""
        return sum(self._chunk_rows(sl.stop - sl.start) for sl in self.chunks(n))

    def run_batch(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        image_hw: np.ndarray,
        score_threshold: np.ndarray | float | None = None,
        max_detections: np.ndarray | int | None = None,
        nms_threshold: np.ndarray | float | None = None,
        class_mask: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the compiled function on ``n`` resized images; ``n`` rows out, whatever the buckets.

        The detector alone knows the bucket sizes: it copies the images once into a buffer of the
        bucket's size (no copy when ``images`` already is a float32 array of exactly a bucket's
        rows), pads the per-image arguments with rows that detect nothing, and drops those rows from
        the outputs. More images than the largest bucket are split into several calls.

        Args:
          images: ``n`` float32 ``[S, S, 3]`` resized RGB (0..255, means not subtracted): an
            ``[n, S, S, 3]`` array or a sequence of ``[S, S, 3]`` arrays (stacked here, not before).
          image_hw: ``[n, 2]`` original ``(height, width)``.
          score_threshold: ``[n]`` or scalar; default the detector's.
          max_detections: ``[n]`` or scalar caps; default the detector's.
          nms_threshold: ``[n]`` or scalar NMS IoU thresholds; default the detector's.
          class_mask: bool ``[n, C]`` (or ``[C]``) allowed class ids, column 0 ignored; default all.
        Returns:
          numpy ``boxes [n, D, 4]``, ``scores [n, D]``, ``classes [n, D]``, ``num_detections [n]``.
        """
        n = len(images)
        thr = np.broadcast_to(
            np.float32(self.score_threshold if score_threshold is None else score_threshold), (n,)
        ).astype(np.float32)
        caps = np.broadcast_to(
            np.int32(self.max_detections if max_detections is None else max_detections), (n,)
        ).astype(np.int32)
        nms = np.broadcast_to(
            np.float32(self.nms_threshold if nms_threshold is None else nms_threshold), (n,)
        ).astype(np.float32)
        num_classes = len(self.class_names)
        mask = np.broadcast_to(
            np.bool_(True) if class_mask is None else np.asarray(class_mask, bool), (n, num_classes)
        ).astype(bool)
        image_hw = np.asarray(image_hw, np.float32).reshape(n, 2)
        parts = []
        for sl in self.chunks(n):
            parts.append(self._run_bucket(images[sl], image_hw[sl], thr[sl], caps[sl], nms[sl], mask[sl]))
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _bucket_images(self, images: np.ndarray | Sequence[np.ndarray], bucket: int) -> np.ndarray:
        """``n`` images -> float32 ``[bucket, S, S, 3]``, rows past ``n`` zero (one copy at most, into a
        buffer TensorFlow takes over without copying it again: :func:`input_tensor`)."""
        n, s = len(images), self.input_size
        if n == bucket and isinstance(images, np.ndarray) and images.dtype == np.float32:
            return images  # already a whole bucket: fed as it is
        buffer = aligned_empty((bucket, s, s, 3))
        for row, image in enumerate(images):
            buffer[row] = image
        buffer[n:] = 0.0
        return buffer

    def _run_bucket(self, images, image_hw, thr, caps, nms, mask) -> dict[str, np.ndarray]:
        """At most one bucket of images: pad to the bucket (unless not ``pads_to_bucket``: then ``n``
        rows exactly), run, drop the padding rows."""
        n = len(images)
        b = self._chunk_rows(n)
        images = self._bucket_images(images, b)
        image_hw, thr, caps, nms, mask = pad_controls(b - n, image_hw, thr, caps, nms, mask)
        if self._graph is None:
            self._graph = self._fn.get_concrete_function()
        out = self._graph(
            input_tensor(images),
            tf.constant(image_hw),
            tf.constant(thr),
            tf.constant(caps),
            tf.constant(nms),
            tf.constant(mask),
        )
        return {k: v.numpy()[:n] for k, v in out.items()}

    def warmup(
        self, buckets: Sequence[int] | None = None, retime_below_s: float = 1.0, retime_runs: int = 3
    ) -> dict[int, float]:
        """Run every bucket once (the first run traces) so that serving never traces or compiles, and
        time each bucket's call.

        A bucket's first run also pays one-time costs (the trace; the backend's first use of that
        shape), which would make small, fast calls look slower than they are, and one call is at the
        mercy of whatever else the machine does at that moment (on a shared 2-core VM, single calls
        of the demo model's buckets 8 and 16 were timed 0.13 and 0.18 s, against 0.09 and 0.18 s by
        the raw benchmark). So a bucket whose first run traced, or took less than ``retime_below_s``
        (repeating it is cheap), runs ``retime_runs`` more times and keeps the fastest; slow calls (a
        large model on a CPU) keep their first time, where those costs matter little.

        Each call gets what the batcher hands :meth:`run_batch` when serving: a list of ``b`` resized rows
        (zeros here), copied into an aligned bucket buffer that the network takes over
        (:func:`input_tensor`), so the timing includes that copy and no ``tf.constant`` copy (a whole
        ``np.zeros`` bucket would be fed as it is, and glibc starts a large block 16 bytes past a page
        boundary: misaligned, copied).

        Returns:
          seconds of one call per bucket, ``{bucket: seconds}``, in bucket order.
        """
        s = self.input_size
        row = np.zeros((s, s, 3), np.float32)
        seconds = {}
        for b in buckets or self.buckets:
            images, hw = [row] * b, np.full((b, 2), s, np.float32)
            traces = self.trace_count
            seconds[b] = _timed(self.run_batch, images, hw)
            if self.trace_count > traces or seconds[b] < retime_below_s:
                seconds[b] = min(
                    seconds[b], *(_timed(self.run_batch, images, hw) for _ in range(retime_runs))
                )
        return seconds

    def resize(self, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 ``[H, W, 3]`` -> float32 ``[S, S, 3]`` (TF1 bilinear WARP from the uint8 pixels, no
        float copy of the source: :func:`~predictor.ssd.preprocess.resize_warp_uint8`), written into
        ``out`` when given."""
        return resize_warp_uint8(image, self.input_size, out)

    def detect(
        self,
        images: Sequence[np.ndarray],
        score_threshold: float | None = None,
        max_detections: int | None = None,
        nms_threshold: float | None = None,
        class_mask: np.ndarray | None = None,
    ) -> list[ImageDetections]:
        """Detect objects in uint8 RGB images ``[H, W, 3]`` of any sizes, as one batch
        (``class_mask``: bool ``[C]`` allowed class ids, see :meth:`run_batch`)."""
        if not images:
            return []
        resized = [self.resize(im) for im in images]  # stacked once, into the bucket's buffer
        hw = np.asarray([im.shape[:2] for im in images], np.float32)
        out = self.run_batch(resized, hw, score_threshold, max_detections, nms_threshold, class_mask)
        return split_detections(out)


#: Alignment in bytes of a NumPy buffer that TensorFlow may use as a tensor without copying it (Eigen's
#: largest, ``EIGEN_MAX_ALIGN_BYTES``, with AVX-512; TensorFlow aborts the process on a misaligned one).
TENSOR_ALIGN = 64


def aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """Uninitialised C-contiguous float32 array whose data starts on a :data:`TENSOR_ALIGN` boundary."""
    nbytes = int(np.prod(shape)) * 4
    raw = np.empty(nbytes + TENSOR_ALIGN, np.uint8)
    offset = -raw.ctypes.data % TENSOR_ALIGN
    return raw[offset : offset + nbytes].view(np.float32).reshape(shape)


def input_tensor(images: np.ndarray) -> tf.Tensor:
    """float32 images -> the tensor fed to the network: the same memory, through DLPack, when the array
    is C-contiguous, writeable and :data:`TENSOR_ALIGN`-aligned (:func:`aligned_empty`, what
    ``Detector._bucket_images`` fills); else a copy (``tf.constant``). A batch of 8 demo images (8.6 MB)
    cost 4.1 ms of CPU through ``tf.constant`` (a fresh allocation, page faults included, and the copy)
    and 1.8 ms filled into a fresh aligned buffer and taken over (``bench/prepare_paths.py``).
    The caller must not write into ``images`` while the tensor is in use."""
    if (
        images.dtype == np.float32
        and images.flags.c_contiguous
        and images.flags.writeable
        and images.ctypes.data % TENSOR_ALIGN == 0
    ):
        return tf.experimental.dlpack.from_dlpack(images.__dlpack__())
    return tf.constant(images, tf.float32)


def pad_controls(
    pad: int, image_hw: np.ndarray, thr: np.ndarray, caps: np.ndarray, nms: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, ...]:
    """The per-image arguments of ``run_batch`` with ``pad`` rows more that detect nothing: image
    ``(1, 1)``, threshold 1, cap 0, NMS threshold 1, no class allowed."""
    if not pad:
        return image_hw, thr, caps, nms, mask
    return (
        np.concatenate([image_hw, np.ones((pad, 2), np.float32)]),
        np.concatenate([thr, np.ones(pad, np.float32)]),
        np.concatenate([caps, np.zeros(pad, np.int32)]),
        np.concatenate([nms, np.ones(pad, np.float32)]),
        np.concatenate([mask, np.zeros((pad, mask.shape[1]), bool)]),
    )


def _timed(fn: Callable[..., object], *args: object) -> float:
    """Seconds ``fn(*args)`` took."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def split_detections(out: dict[str, np.ndarray]) -> list[ImageDetections]:
    """Padded batch output -> one :class:`ImageDetections` per image (views, no per-box loop)."""
    result = []
    for i, n in enumerate(out["num_detections"].tolist()):
        result.append(ImageDetections(out["boxes"][i, :n], out["scores"][i, :n], out["classes"][i, :n]))
    return result
