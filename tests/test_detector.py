"""The compiled detector: batching equals single calls, no retracing, no degenerate or duplicate boxes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from predictor.ssd.detector import TENSOR_ALIGN, Detector, aligned_empty, buckets_up_to, input_tensor


def test_buckets():
    assert buckets_up_to(32) == (1, 2, 4, 8, 16, 32)
    assert buckets_up_to(12) == (1, 2, 4, 8, 12)
    assert buckets_up_to(1) == (1,)


def test_batch_equals_single_calls(random_tiny_model_dir, shapes_images):
    det = Detector.from_dir(str(random_tiny_model_dir), max_batch_size=4)
    batched = det.detect(shapes_images)  # 6 images: one bucket of 4, one of 2 (padded)
    singles = [det.detect([im])[0] for im in shapes_images]
    assert sum(len(d.scores) for d in batched) > 0
    for a, b in zip(batched, singles, strict=True):
        np.testing.assert_array_equal(a.classes, b.classes)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-4, atol=1e-2)


def test_no_retracing_after_warmup(random_tiny_model_dir, shapes_images):
    det = Detector.from_dir(str(random_tiny_model_dir), max_batch_size=8)
    seconds = det.warmup()
    assert list(seconds) == list(det.buckets) and all(s > 0 for s in seconds.values())
    traced = det.trace_count
    assert traced == 1, "one trace (open batch dimension) serves every bucket"
    for n in (1, 3, 8, 5, 2, 7):
        det.detect(shapes_images[:1] * n, score_threshold=0.3, max_detections=7)
    assert det.trace_count == traced


@pytest.mark.parametrize(("retime_below_s", "runs_again"), [(float("inf"), [1, 2, 4, 8]), (0.0, [1])])
def test_warmup_times_more_runs_where_the_first_paid_one_time_costs(
    random_tiny_model_dir, retime_below_s, runs_again
):
    """The first run of the first bucket traces: it always runs three more times, and its timing is the
    fastest of those or better. Other buckets run again when their first run was under
    ``retime_below_s``."""
    det = Detector.from_dir(str(random_tiny_model_dir), max_batch_size=8)
    calls = []
    run_batch = det.run_batch

    def counting(images, hw, *args, **kwargs):
        calls.append(len(images))
        return run_batch(images, hw, *args, **kwargs)

    det.run_batch = counting
    seconds = det.warmup(retime_below_s=retime_below_s)
    assert list(seconds) == [1, 2, 4, 8] and det.trace_count == 1
    assert calls == [b for b in (1, 2, 4, 8) for _ in range(4 if b in runs_again else 1)]


def test_warmup_feeds_the_network_aligned_buffers_as_serving_does(random_tiny_model_dir, monkeypatch):
    """Every warm-up call reaches :func:`input_tensor` with an aligned, writeable, C-contiguous float32
    bucket (the DLPack path serving takes, no ``tf.constant`` copy), and the tensor is that memory."""
    from predictor.ssd import detector as detector_module

    fed = []

    def spy(images):
        tensor = input_tensor(images)
        flags = images.flags
        fed.append((images.shape[0], images.ctypes.data % TENSOR_ALIGN, images.dtype, flags.c_contiguous,
                    flags.writeable, _shares_memory(tensor, images)))  # fmt: skip
        return tensor

    monkeypatch.setattr(detector_module, "input_tensor", spy)
    det = Detector.from_dir(str(random_tiny_model_dir), max_batch_size=8)
    det.warmup(retime_below_s=0.0)  # buckets 2-8 once; bucket 1 traces: four runs
    assert [b for b, *_ in fed] == [1, 1, 1, 1, 2, 4, 8]
    assert all(rest == [0, np.float32, True, True, True] for _, *rest in fed), fed


def _shares_memory(tensor, images: np.ndarray) -> bool:
    """Whether ``tensor`` is ``images``' memory (a write into ``images`` shows in it)."""
    before = float(images.flat[0])
    images.flat[0] = before + 1.0
    shared = float(tensor[0, 0, 0, 0]) == before + 1.0
    images.flat[0] = before
    return shared


def test_only_the_detector_pads_to_buckets(random_tiny_model_dir, shapes_images):
    """The batcher hands the detector exactly the real images (3, then 5); the detector alone pads them,
    so its compiled function still only sees bucket shapes (4, 8), and every request gets its own rows."""
    from predictor.serving.batcher import DynamicBatcher

    det = Detector.from_dir(str(random_tiny_model_dir), max_batch_size=8)
    det.warmup()
    traced = det.trace_count
    given, compiled = [], []
    run_batch, fn = det.run_batch, det._graph  # the traced function the detector calls

    def recording_run_batch(images, *args, **kwargs):
        given.append(len(images))
        return run_batch(images, *args, **kwargs)

    def recording_fn(images, *args):
        compiled.append(int(images.shape[0]))
        return fn(images, *args)

    det._graph = recording_fn
    batcher = DynamicBatcher(recording_run_batch, max_batch_size=8, batch_wait_s=0.001)
    c = len(det.class_names)

    async def one_request(images):
        n = len(images)
        extra = {
            "nms_threshold": np.full(n, det.nms_threshold, np.float32),
            "class_mask": np.ones((n, c), bool),
        }
        resized = [det.resize(im) for im in images]
        hw = np.asarray([im.shape[:2] for im in images], np.float32)
        with batcher.admit(n):
            return await batcher.run(
                resized, hw, np.full(n, 0.2, np.float32), np.full(n, 50, np.int32), extra
            )

    outs = [asyncio.run(one_request(shapes_images[:k])) for k in (3, 5)]
    assert given == [3, 5], "the batcher padded (or split) the images it handed the detector"
    assert compiled == [4, 8] and det.trace_count == traced
    for k, out in zip((3, 5), outs, strict=True):
        assert {len(v) for v in out.values()} == {k}
        direct = det.detect(shapes_images[:k], score_threshold=0.2, max_detections=50)
        assert out["num_detections"].tolist() == [len(d.scores) for d in direct]
        for i, d in enumerate(direct):
            np.testing.assert_allclose(out["scores"][i, : len(d.scores)], d.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 300, 300, 3), (3, 7, 5, 3), (1,), (16, 300, 300, 3)])
def test_aligned_buffers_start_on_the_tensor_boundary(shape):
    for _ in range(5):  # several allocations: a lucky one is not enough
        buffer = aligned_empty(shape)
        assert buffer.shape == shape and buffer.dtype == np.float32 and buffer.flags.c_contiguous
        assert buffer.flags.writeable and buffer.ctypes.data % TENSOR_ALIGN == 0


def test_the_network_input_shares_an_aligned_buffer_and_copies_anything_else():
    """An aligned float32 buffer is taken over (a later write shows in the tensor); a misaligned, strided,
    read-only or float64 array is copied (TensorFlow would abort the process on a misaligned buffer)."""
    buffer = aligned_empty((2, 4, 4, 3))
    buffer[...] = 1.0
    tensor = input_tensor(buffer)
    buffer[0, 0, 0, 0] = 42.0
    assert tensor.dtype.name == "float32" and tensor.shape == (2, 4, 4, 3)
    assert float(tensor[0, 0, 0, 0]) == 42.0  # the same memory
    raw = aligned_empty((2 * 4 * 4 * 3 + 1,))
    misaligned = raw[1:].reshape(2, 4, 4, 3)  # 4 bytes past the boundary
    readonly = aligned_empty((2, 4, 4, 3))
    readonly.flags.writeable = False
    for array in (misaligned, aligned_empty((2, 4, 8, 3))[:, :, ::2], readonly, np.ones((2, 4, 4, 3))):
        if array.flags.writeable:
            array[...] = 1.0
        tensor = input_tensor(array)
        if array.flags.writeable:
            array[0, 0, 0, 0] = 42.0
        assert tensor.dtype.name == "float32" and float(tensor[0, 0, 0, 0]) != 42.0  # a copy


def test_bucket_buffers_are_aligned_and_give_the_same_detections(random_tiny_model_dir, shapes_images):
    """``run_batch`` on a list of rows (stacked into an aligned bucket buffer fed without a copy) gives
    the detections of the same rows as one whole-bucket array (fed through ``tf.constant``), bit for bit."""
    det = Detector.from_dir(str(random_tiny_model_dir), max_batch_size=8)
    rows = [det.resize(im) for im in shapes_images[:3]]
    bucket = det._bucket_images(rows, 4)
    assert bucket.ctypes.data % TENSOR_ALIGN == 0 and (bucket[3] == 0).all()
    hw = np.asarray([im.shape[:2] for im in shapes_images[:3]], np.float32)
    listed = det.run_batch(rows, hw)
    whole = np.zeros((4, *rows[0].shape), np.float32)
    whole[:3] = rows
    if whole.ctypes.data % TENSOR_ALIGN == 0:  # make sure this one takes the tf.constant path
        whole = np.concatenate([np.zeros(1, np.float32), whole.ravel()])[1:].reshape(whole.shape)
    arrays = det.run_batch(whole, np.concatenate([hw, hw[:1]]))
    for key in listed:
        assert np.array_equal(listed[key], arrays[key][:3]), key


def test_boxes_valid_unique_and_bounded(random_tiny_model_dir, shapes_images):
    det = Detector.from_dir(str(random_tiny_model_dir))
    for image, d in zip(shapes_images, det.detect(shapes_images, score_threshold=0.05), strict=True):
        h, w = image.shape[:2]
        assert len(d.scores) > 0
        b = d.boxes
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= h).all()
        assert (np.diff(d.scores) <= 0).all() and (d.scores > 0.05).all()
        assert len(d.scores) <= det.max_detections
        rows = {(int(c), *np.round(r, 2)) for c, r in zip(d.classes, b, strict=True)}
        assert len(rows) == len(d.scores)


def test_request_caps(random_tiny_model_dir, shapes_images):
    det = Detector.from_dir(str(random_tiny_model_dir))
    full = det.detect(shapes_images[:1], score_threshold=0.05)[0]
    capped = det.detect(shapes_images[:1], score_threshold=0.05, max_detections=3)[0]
    assert len(full.scores) > 3 and len(capped.scores) == 3
    np.testing.assert_array_equal(capped.scores, full.scores[:3])


def test_find_libdevice_where_xla_looks(tmp_path, monkeypatch):
    """--xla on a GPU is refused at start unless libdevice is where XLA looks (the GPU image ships the
    nvidia-cuda-nvcc wheel's copy); see Detector.__init__."""
    import sys

    from predictor.ssd.detector import LIBDEVICE, find_libdevice

    wheel_site = tmp_path / "site-packages"
    monkeypatch.setattr(sys, "path", [str(wheel_site)])
    flagged = tmp_path / "cuda-data"
    no_cuda_here = not any(Path("/usr/local").glob(f"cuda*/{LIBDEVICE}"))
    if no_cuda_here:
        assert find_libdevice({"XLA_FLAGS": f"--xla_gpu_cuda_data_dir={flagged}"}) is None
    (flagged / LIBDEVICE).parent.mkdir(parents=True)
    (flagged / LIBDEVICE).write_bytes(b"BC")
    assert find_libdevice({"XLA_FLAGS": f"--xla_dump_to=/x --xla_gpu_cuda_data_dir={flagged}"}) == flagged
    nvcc = wheel_site / "nvidia" / "cuda_nvcc"
    (nvcc / LIBDEVICE).parent.mkdir(parents=True)
    (nvcc / LIBDEVICE).write_bytes(b"BC")
    assert find_libdevice({}) in (nvcc, *Path("/usr/local").glob("cuda*"))
