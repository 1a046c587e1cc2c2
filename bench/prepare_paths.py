"""CPU of the server's per-image preparation paths: the WARP resize to ``S x S`` and feeding a batch to
the network, each the way the server does it beside the alternative, with glibc's malloc tuned as the
server tunes it (``--malloc_mmap_threshold_bytes``' default) before anything is allocated.

Resize, by source size: ``numpy``: :func:`predictor.ssd.preprocess.resize_warp_numpy` (gathers the
``4 * S * S`` taps from the uint8 image, then a dozen float32 array passes); ``tf``: TensorFlow's fused
``ResizeBilinear`` kernel called eagerly (one op, run in the calling thread; TensorFlow first copies the
whole uint8 source into a tensor of its own); ``served``: :func:`predictor.ssd.preprocess.resize_warp_uint8`,
what the decode threads call (``tf`` up to ``TF_RESIZE_MAX_PIXELS`` source pixels, ``numpy`` beyond).
Each row also checks that the two outputs are equal bit for bit.

Feed, by batch: the resized rows copied into a fresh bucket buffer, then ``tf.constant`` (a second
allocation and copy), against :func:`predictor.ssd.detector.aligned_empty` + :func:`~predictor.ssd.detector.
input_tensor` (the server's: TensorFlow takes the aligned buffer over through DLPack).

CPU time is ``time.process_time`` (all threads) over a run of calls, the median of 5 runs; seeded random
pixels.

``python -m bench.prepare_paths [--size 300] [--min_time_s 0.5]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from bench.common import fmt_table, machine_info

#: (width, height) of the sources: the served bench's two sizes, 1080p, 3 and 3.7 MP, 12 MP.
SIZES: tuple[tuple[int, int], ...] = (
    (500, 375), (1280, 720), (1920, 1080), (2048, 1536), (2560, 1440), (4000, 3000),
)  # fmt: skip


def cpu_ms(fn: Callable[[], object], min_time_s: float, runs: int = 5) -> float:
    """Median over ``runs`` of the CPU ms per call of ``fn()``, each run lasting ``min_time_s / runs``."""
    fn()  # the first call builds TensorFlow's eager kernel
    per_run = []
    for _ in range(runs):
        calls, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
        while calls < 3 or time.perf_counter() - wall0 < min_time_s / runs:
            fn()
            calls += 1
        per_run.append(1000.0 * (time.process_time() - cpu0) / calls)
    return statistics.median(per_run)


def measure(size: int, min_time_s: float) -> list[list[object]]:
    """Resize: one row per source size: pixels, CPU ms of each path, the served path, bit equality."""
    import tensorflow as tf

    from predictor.ssd.preprocess import TF_RESIZE_MAX_PIXELS, resize_warp_numpy, resize_warp_uint8

    def tf_kernel(image: np.ndarray) -> np.ndarray:
        return tf.raw_ops.ResizeBilinear(
            images=image[None], size=[size, size], align_corners=False, half_pixel_centers=False
        )[0].numpy()

    rng = np.random.default_rng(0)
    rows = []
    for w, h in SIZES:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ms = {
            "numpy": cpu_ms(lambda im=image: resize_warp_numpy(im, size), min_time_s),
            "tf": cpu_ms(lambda im=image: tf_kernel(im), min_time_s),
            "served": cpu_ms(lambda im=image: resize_warp_uint8(im, size), min_time_s),
        }
        numpy_bits, tf_bits = resize_warp_numpy(image, size).view(np.uint32), tf_kernel(image).view(np.uint32)
        same = np.array_equal(numpy_bits, tf_bits)
        served_path = "tf" if w * h <= TF_RESIZE_MAX_PIXELS else "numpy"
        rows.append([f"{w}x{h}", round(w * h / 1e6, 2), ms["numpy"], ms["tf"], ms["numpy"] / ms["tf"],
                     served_path, ms["served"], "yes" if same else "NO"])  # fmt: skip
    return rows


def feed_rows(size: int, min_time_s: float, batches: tuple[int, ...] = (8, 16)) -> list[list[object]]:
    """One row per batch: CPU ms per batch and per image of the two ways to feed resized rows."""
    import tensorflow as tf

    from predictor.ssd.detector import aligned_empty, input_tensor

    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        images = [rng.random((size, size, 3), np.float32) for _ in range(batch)]

        def fill(buffer: np.ndarray, images: list[np.ndarray] = images) -> np.ndarray:
            for row, image in enumerate(images):
                buffer[row] = image
            return buffer

        shape = (batch, size, size, 3)
        copied = cpu_ms(lambda s=shape: tf.constant(fill(np.empty(s, np.float32)), tf.float32), min_time_s)
        taken = cpu_ms(lambda s=shape: input_tensor(fill(aligned_empty(s))), min_time_s)
        rows.append([batch, copied, taken, copied / batch, taken / batch, (copied - taken) / batch])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300, help="output side S (the demo model's is 300)")
    parser.add_argument("--min_time_s", type=float, default=0.5, help="per path and source size")
    args = parser.parse_args(argv)
    from predictor.serving import heap
    from predictor.serving.options import ServingOptions

    tuned = heap.tune_malloc(ServingOptions.malloc_mmap_threshold_bytes)
    rows = measure(args.size, args.min_time_s)
    info = machine_info()
    print(
        f"{info['cpu']}, {info['cpu_count']} cores, load {info['load_average_at_start'][0]:.1f}, "
        f"{info['utc']}; output {args.size}x{args.size}"
    )
    headers = ["source", "MP", "numpy ms", "tf ms", "numpy / tf", "served path", "served ms", "bit-equal"]
    print(fmt_table(headers, rows))
    print(f"\nFeeding a batch to the network (malloc tuned as the server does: {tuned}):")
    headers = ["batch", "tf.constant ms", "served ms", "tf.constant ms/img", "served ms/img", "saved ms/img"]
    print(fmt_table(headers, feed_rows(args.size, args.min_time_s)))
    return 0 if all(r[-1] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
