"""GPU JPEG decode + WARP resize to the network side, for the GPU check (``bench/gpu_check.py``).

nvImageCodec (``nvidia-nvimgcodec-cu12`` + ``nvidia-nvjpeg-cu12``, carried in ``bench/.wheels``) decodes
batches of JPEGs into device buffers; JAX takes them zero-copy over DLPack (through CuPy if JAX refuses
nvImageCodec's capsule) and resizes each to ``S x S`` with the service's TF1 WARP bilinear arithmetic
(:func:`warp_resize`, the same taps and order as ``predictor.ssd.preprocess.resize_warp_numpy``, which
cannot be imported here: that module imports TensorFlow). Rates are images/s for a whole batch, decode
alone and decode + resize, per image size (VGA, 1080p, 12 MP) and batch size, per decoder backend.

The JPEGs are synthesised here (smooth gradients, shapes and mild noise, so they compress like photos
rather than like noise) and encoded by nvImageCodec's own encoder, or by Pillow when present. Without
nvImageCodec or a GPU every row says why it was skipped; nothing fails.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import numpy as np

#: name -> (height, width) of the decoded JPEGs.
SIZES: dict[str, tuple[int, int]] = {"vga": (480, 640), "1080p": (1080, 1920), "12mp": (3000, 4000)}


def synthetic_photo(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 ``[height, width, 3]``: colour gradients, a few rectangles and discs, mild noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    a, b, c = rng.uniform(0.2, 1.0, 3)
    img = np.stack([255 * a * x + 0 * y, 255 * b * y + 0 * x, 255 * c * (1 - x) * y], axis=-1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.05, 0.2) * min(height, width)
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        if rng.random() < 0.5:
            disc = (y - cy / height) ** 2 * height**2 + (x - cx / width) ** 2 * width**2 < r * r
            img[disc] = colour
        else:
            img[int(max(cy - r, 0)) : int(cy + r), int(max(cx - r, 0)) : int(cx + r)] = colour
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def warp_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF1 bilinear taps (``align_corners=False``, ``half_pixel_centers=False``) along one axis: lower and
    upper source indices and the float32 weight of the upper (source ``x = i * in / out`` in float32)."""
    x = np.arange(out_size, dtype=np.float32) * np.float32(in_size / out_size)
    lower = np.floor(x).astype(np.int32)
    upper = np.minimum(lower + 1, in_size - 1).astype(np.int32)
    return lower, upper, (x - lower).astype(np.float32)


def warp_resize(image: Any, size: int) -> Any:
    """JAX: uint8 ``[H, W, 3]`` -> float32 ``[size, size, 3]``, the WARP resize (only the taps gathered)."""
    import jax.numpy as jnp

    h, w, _ = image.shape
    y0, y1, wy = warp_taps(h, size)
    x0, x1, wx = warp_taps(w, size)
    rows = image[jnp.concatenate([y0, y1])].astype(jnp.float32)  # [2S, W, 3]
    block = rows[:, jnp.concatenate([x0, x1])].reshape(2, size, 2, size, 3)
    wx3 = jnp.asarray(wx)[None, :, None]
    top = block[0, :, 0] + (block[0, :, 1] - block[0, :, 0]) * wx3
    bottom = block[1, :, 0] + (block[1, :, 1] - block[1, :, 0]) * wx3
    return top + (bottom - top) * jnp.asarray(wy)[:, None, None]


def encode_jpegs(images: list[np.ndarray], nvimgcodec: Any | None, quality: int = 90) -> tuple[list, str]:
    """JPEG bytes of ``images`` and the encoder used (nvImageCodec, else Pillow)."""
    if nvimgcodec is not None:
        encoder = nvimgcodec.Encoder()
        try:
            params = nvimgcodec.EncodeParams(
                quality_type=nvimgcodec.QualityType.QUALITY, quality_value=quality
            )
        except (AttributeError, TypeError):  # an older API: the codec's default quality
            params = nvimgcodec.EncodeParams()
        encoded = [bytes(encoder.encode(nvimgcodec.as_image(im), ".jpg", params=params)) for im in images]
        return encoded, "nvimgcodec"
    import io

    from PIL import Image

    out = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out, "pillow"


def decoders(nvimgcodec: Any) -> dict[str, Any]:
    """Decoder per backend: the default choice, the hardware JPEG engine alone, the CUDA decoder alone."""
    out = {"default": nvimgcodec.Decoder()}
    for name, kind in (("hw_gpu_only", "HW_GPU_ONLY"), ("gpu_only", "GPU_ONLY")):
        try:
            backend = nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, kind))
            out[name] = nvimgcodec.Decoder(backends=[backend])
        except Exception as e:  # this backend is not on this card / build
            out[name] = f"{type(e).__name__}: {e}"[:200]
    return out


def bench_decode(
    size: int, batches: list[int], sizes: list[str], min_time_s: float, deadline: float, min_left_s: float,
    sink: list[dict], write: Any,
) -> dict[str, Any]:  # fmt: skip
    """Measure every (backend, image size, batch); rows into ``sink``. Returns the section's facts."""
    try:
        from nvidia import nvimgcodec

        backends = decoders(nvimgcodec)  # the default decoder needs a CUDA device
    except Exception as e:
        reason = f"nvImageCodec unusable here ({type(e).__name__}: {e})"[:300]
        for name in sizes:
            sink.extend({"size": name, "batch": b, "skipped": reason} for b in batches)
        write()
        return {"skipped": reason}
    import jax

    facts: dict[str, Any] = {"nvimgcodec": getattr(nvimgcodec, "__version__", "?")}
    resize = jax.jit(warp_resize, static_argnums=1)
    facts["backends"] = {k: (v if isinstance(v, str) else "ok") for k, v in backends.items()}
    for name in sizes:
        h, w = SIZES[name]
        photos = [synthetic_photo(h, w, seed) for seed in range(4)]
        try:
            jpegs, facts["encoder"] = encode_jpegs(photos, nvimgcodec)
        except Exception as e:  # no JPEG encoder: nothing to decode at this size
            reason = f"JPEG encoding failed ({type(e).__name__}: {e})"[:300]
            sink.extend({"size": name, "batch": b, "skipped": reason} for b in batches)
            write()
            continue
        for backend, decoder in backends.items():
            for batch in batches:
                row: dict[str, Any] = {"size": name, "height": h, "width": w, "backend": backend}
                row.update(batch=batch, jpeg_bytes_mean=float(np.mean([len(j) for j in jpegs])))
                if isinstance(decoder, str):
                    row["skipped"] = decoder
                elif deadline - time.perf_counter() < min_left_s:
                    row["skipped"] = "deadline"
                else:
                    measure_row(row, decoder, resize, [jpegs[i % len(jpegs)] for i in range(batch)], size,
                                min_time_s)  # fmt: skip
                sink.append(row)
                write()
                print(format_row(row), flush=True)
    return facts


def device_importer(image: Any) -> tuple[Any, str]:
    """How decoded images reach JAX: DLPack straight from nvImageCodec, else through CuPy
    (``__cuda_array_interface__``, then CuPy's DLPack), which the GPU machine has. Tried on ``image``."""
    import jax

    try:
        jax.block_until_ready(jax.dlpack.from_dlpack(image))
        return jax.dlpack.from_dlpack, "dlpack"
    except Exception:
        import cupy

        def via_cupy(im: Any) -> Any:
            return jax.dlpack.from_dlpack(cupy.asarray(im))

        jax.block_until_ready(via_cupy(image))
        return via_cupy, "cupy"


def measure_row(
    row: dict, decoder: Any, resize: Any, data: list[bytes], size: int, min_time_s: float
) -> None:
    """Fill ``row`` with decode-only and decode+resize rates of one batch (or the error). Decode-only
    includes the zero-copy hand-over to JAX, whose ``block_until_ready`` waits for the decode."""
    import jax
    import jax.numpy as jnp

    try:
        to_jax, row["handover"] = device_importer(decoder.decode(data[:1])[0])

        def decode_only() -> list:
            return jax.block_until_ready([to_jax(im) for im in decoder.decode(data)])

        def decode_resize() -> Any:
            arrays = [to_jax(im) for im in decoder.decode(data)]
            return jax.block_until_ready(jnp.stack([resize(a, size) for a in arrays]))

        first = decode_resize()  # compiles the resize for this image size
        assert first.shape == (len(data), size, size, 3), first.shape
        for key, fn in (("decode", decode_only), ("decode_resize", decode_resize)):
            fn()
            times: list[float] = []
            start = time.perf_counter()
            while len(times) < 3 or time.perf_counter() - start < min_time_s:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            row[f"{key}_images_per_s"] = len(data) * len(times) / sum(times)
            row[f"{key}_ms_median"] = 1e3 * sorted(times)[len(times) // 2]
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {e}"[:500]
        traceback.print_exc()


def format_row(row: dict) -> str:
    head = f"decode {row['size']:6s} {row.get('backend', '-'):12s} batch {row['batch']:3d}:"
    if "decode_resize_images_per_s" in row:
        return (f"{head} decode {row['decode_images_per_s']:9.1f} img/s, decode+resize "
                f"{row['decode_resize_images_per_s']:9.1f} img/s")  # fmt: skip
    return f"{head} {row.get('skipped') or row.get('error')}"
