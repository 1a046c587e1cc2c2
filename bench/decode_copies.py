"""CPU of the copies between a decoded JPEG and its resized row, and of the ways around them.

After Pillow decodes a JPEG the decode thread makes a uint8 RGB array of it (``images.to_rgb_array``;
Pillow keeps RGB as 4 bytes per pixel, RGBX: the "RGBX -> RGB copy"), then resizes it
(``Detector.resize``: TensorFlow's ``ResizeBilinear`` kernel, which first copies the NumPy source into a
tensor of its own). Each path below starts from the same loaded Pillow
image and ends with float32 ``[S, S, 3]``; CPU ms per image (``time.process_time``, median of 5 runs):

  asarray       ``np.asarray`` (``tobytes``: packed in 64 KiB chunks, then joined: two copies) +
                ``resize_warp_uint8``: the server's path up to commit 80a3f63
  one_chunk     :func:`predictor.serving.images.rgb_pixels` (Pillow's raw encoder asked for the whole
                image in one chunk: one copy) + the kernel: the server's path since
  rgbx_tf       Pillow's RGBX buffer without a copy (its Arrow C data export, ``__arrow_c_array__``,
                read through ctypes) fed to the kernel as 4 channels, the 4th dropped from the output
  rgbx_numpy    the same zero-copy view, ``resize_warp_numpy`` (reads only the ``4 * S * S`` taps)
  rgbx_pack     the view packed to RGB by NumPy into a 64-byte aligned buffer, handed to TensorFlow
                through DLPack (no copy of TensorFlow's own), then the kernel
  pillow_affine Pillow's affine ``BILINEAR`` transform with TF1's sample positions (8-bit output:
                not bit-identical), then float32

glibc's malloc is tuned as the server tunes it (``--malloc_mmap_threshold_bytes``' default) first. Then
the parts: ``asarray`` alone, the kernel on an existing tensor (``kernel``), ``tf.constant`` of the
RGB source (``convert``). ``max |diff|`` is against ``asarray`` (0: bit-identical).

``python -m bench.decode_copies [--size 300] [--min_time_s 0.5]``
"""

from __future__ import annotations

import argparse
import ctypes
import io
import sys
from collections.abc import Callable

import numpy as np

from bench.common import fmt_table, machine_info, make_test_jpegs
from bench.prepare_paths import cpu_ms


class _ArrowArray(ctypes.Structure):
    """The Arrow C data interface's ``struct ArrowArray``."""


_ArrowArray._fields_ = [
    ("length", ctypes.c_int64), ("null_count", ctypes.c_int64), ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64), ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
    ("dictionary", ctypes.POINTER(_ArrowArray)), ("release", ctypes.c_void_p),
    ("private_data", ctypes.c_void_p),
]  # fmt: skip
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def rgbx_view(image) -> np.ndarray:
    """A loaded Pillow RGB image -> uint8 ``[H, W, 4]`` sharing its memory (the Arrow export keeps the
    pixels alive while the capsule, held by the array's buffer, lives). ValueError when Pillow holds the
    rows in several blocks (images over its 16 MiB block size)."""
    _, capsule = image.__arrow_c_array__()
    array = ctypes.cast(_capsule_pointer(capsule, b"arrow_array"), ctypes.POINTER(_ArrowArray)).contents
    pixels = array.children[0].contents.buffers[1]  # FixedSizeList<uint8>[4]: the child's data buffer
    width, height = image.size

    class Buffer(ctypes.c_uint8 * (width * height * 4)):
        pass

    buffer = Buffer.from_address(pixels)
    buffer.capsule = capsule  # released with the last array that uses the buffer
    return np.frombuffer(buffer, np.uint8).reshape(height, width, 4)


def aligned_uint8(shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape))
    raw = np.empty(size + 64, np.uint8)
    offset = -raw.ctypes.data % 64
    return raw[offset : offset + size].reshape(shape)


def paths(image, size: int) -> dict[str, Callable[[], np.ndarray]]:
    """Every path of the module docstring for one loaded image."""
    import tensorflow as tf
    from PIL import Image

    from predictor.serving.images import rgb_pixels
    from predictor.ssd.preprocess import resize_warp_numpy, resize_warp_uint8

    width, height = image.size

    def kernel(x):
        with tf.device("/CPU:0"):
            return tf.raw_ops.ResizeBilinear(
                images=x, size=[size, size], align_corners=False, half_pixel_centers=False
            ).numpy()[0]

    def rgbx_pack() -> np.ndarray:
        rgb = aligned_uint8((1, height, width, 3))
        np.copyto(rgb[0], rgbx_view(image)[..., :3])
        return kernel(tf.experimental.dlpack.from_dlpack(rgb.__dlpack__()))

    sx, sy = width / size, height / size  # TF1: source = i * scale; Pillow: a * (i + 0.5) + c - 0.5
    affine = (sx, 0, 0.5 - 0.5 * sx, 0, sy, 0.5 - 0.5 * sy)
    return {
        "asarray": lambda: resize_warp_uint8(np.asarray(image), size),
        "one_chunk": lambda: resize_warp_uint8(rgb_pixels(image), size),
        "rgbx_tf": lambda: kernel(rgbx_view(image)[None])[..., :3],
        "rgbx_numpy": lambda: resize_warp_numpy(rgbx_view(image), size)[..., :3],
        "rgbx_pack": rgbx_pack,
        "pillow_affine": lambda: np.asarray(
            image.transform((size, size), Image.AFFINE, affine, resample=Image.BILINEAR), np.float32
        ),
    }


def measure(jpeg: bytes, size: int, min_time_s: float) -> list[list[object]]:
    import tensorflow as tf
    from PIL import Image

    image = Image.open(io.BytesIO(jpeg))
    image.load()
    label = f"{image.size[0]}x{image.size[1]}"
    rgb = np.asarray(image)
    tensor = tf.constant(rgb[None])
    reference = paths(image, size)["asarray"]()
    rows = []
    for name, fn in paths(image, size).items():
        diff = float(np.abs(fn() - reference).max())
        rows.append([label, name, cpu_ms(fn, min_time_s), diff])
    for name, fn in {
        "asarray": lambda: np.asarray(image),
        "convert": lambda: tf.constant(rgb[None]),
        "kernel": lambda: tf.raw_ops.ResizeBilinear(
            images=tensor, size=[size, size], align_corners=False, half_pixel_centers=False
        ).numpy(),
    }.items():
        rows.append([label, f"({name})", cpu_ms(fn, min_time_s), "-"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=300, help="output side S (the demo model's is 300)")
    parser.add_argument("--min_time_s", type=float, default=0.5, help="per path and source")
    args = parser.parse_args(argv)
    from bench.pipeline import make_image
    from predictor.serving import heap
    from predictor.serving.options import ServingOptions

    tuned = heap.tune_malloc(ServingOptions.malloc_mmap_threshold_bytes)  # as the server, before any pixel
    jpegs = make_test_jpegs(1)  # the served bench's 500x375 and 1280x720
    jpegs.append(make_image(1920, 1080, "JPEG"))
    rows = []
    for jpeg in jpegs:
        rows += measure(jpeg, args.size, args.min_time_s)
    info = machine_info()
    print(
        f"{info['cpu']}, {info['cpu_count']} cores, load {info['load_average_at_start'][0]:.1f}, "
        f"nice {info['nice']}, {info['utc']}; output {args.size}x{args.size}; malloc tuned: {tuned}"
    )
    print(fmt_table(["source", "path", "CPU ms per image", "max |diff|"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
