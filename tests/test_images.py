"""Image decoding: formats, modes, EXIF orientation, base64 forms, and the caps on untrusted images."""

from __future__ import annotations

import base64
import io
from unittest import mock

import numpy as np
import pytest
from kserve.errors import InvalidInput
from PIL import Image, ImageFile, features
from serving_fixtures import encode_image, forge_gif_size, forge_jpeg_size, forge_png_size

from predictor.serving.images import (
    FORMATS,
    ImageError,
    ImageLimits,
    _describe,
    check_pixel_array,
    decode_base64,
    decode_image,
    decode_image_reduced,
    rgb_pixels,
    to_rgb_array,
)

RNG = np.random.default_rng(3)
RGB = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)


def save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture
def no_pixel_decoding():
    """Fails the test if Pillow starts decoding pixel data."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"decoded pixels of a {self.size} image")

    with mock.patch.object(ImageFile.ImageFile, "load", refuse):
        yield


# ----------------------------------------------------------------------------- formats and modes
@pytest.mark.parametrize("fmt", ["PNG", "BMP", *(["WEBP"] if features.check("webp") else [])])
def test_lossless_formats_decode_exactly(fmt):
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(encode_image(RGB, fmt, **kwargs))
    assert out.dtype == np.uint8 and out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out, RGB)


def test_jpeg_decodes_like_pillow():
    data = encode_image(RGB, "JPEG", quality=95)
    np.testing.assert_array_equal(decode_image(data), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_gif_gives_the_first_frame():
    frames = [Image.new("RGB", (10, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    out = decode_image(data)
    assert out.shape == (8, 10, 3)
    assert tuple(out[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("1", "PNG"),
        ("P", "PNG"),
        ("LA", "PNG"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("L", "JPEG"),
    ],
)
def test_modes_become_rgb(mode, fmt):
    image = Image.fromarray(RGB).convert(mode)
    out = decode_image(save(image, fmt))
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    if mode in ("RGBA",):
        np.testing.assert_array_equal(out, RGB)  # alpha dropped, colours kept
    if mode == "L" and fmt == "PNG":
        gray = np.asarray(image)
        assert (out == gray[:, :, None]).all()


def test_palette_with_transparency():
    image = Image.fromarray(RGB).convert("P")
    image.info["transparency"] = 0
    out = decode_image(save(image, "PNG", transparency=0))
    assert out.shape == (12, 16, 3)


def test_16_bit_grayscale_is_scaled_to_8_bit():
    gray16 = (np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300).astype(np.uint16)
    out = decode_image(save(Image.fromarray(gray16), "PNG"))
    assert out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out[:, :, 0], (gray16 >> 8).astype(np.uint8))
    assert out.max() > 200  # not clipped at 255 like Pillow's own convert("RGB")


@pytest.mark.parametrize(
    ("orientation", "shape"), [(1, (12, 16, 3)), (3, (12, 16, 3)), (6, (16, 12, 3)), (8, (16, 12, 3))]
)
def test_exif_orientation_is_applied(orientation, shape):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = save(Image.fromarray(RGB), "JPEG", exif=exif, quality=95)
    out = decode_image(data)
    assert out.shape == shape
    plain = decode_image(save(Image.fromarray(RGB), "JPEG", quality=95))
    if orientation == 6:  # rotate 90 degrees clockwise for display
        np.testing.assert_allclose(out.astype(int), np.rot90(plain, k=-1).astype(int), atol=8)


# ----------------------------------------------------------------------------- rejections
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty image"),
        (b"hello world", "not an image in a supported format"),
        (encode_image(RGB, "PNG")[:60], "corrupt or truncated PNG image"),
        (encode_image(RGB, "JPEG")[:300], "not a decodable image"),
        (save(Image.fromarray(RGB), "TIFF"), "not an image in a supported format"),
        (save(Image.fromarray(RGB), "ICO"), "not an image in a supported format"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image in a supported format"),
    ],
    ids=["empty", "text", "truncated_png", "truncated_jpeg", "tiff", "ico", "eps"],
)
def test_unusable_bytes_raise_image_error(data, message):
    with pytest.raises(ImageError, match=message) as info:
        decode_image(data)
    assert isinstance(info.value, InvalidInput) and info.value.reason == str(info.value)


def test_encoded_size_cap():
    data = encode_image(RGB, "PNG")
    with pytest.raises(ImageError, match=f"encoded image is {len(data)} bytes, the limit is 100"):
        decode_image(data, ImageLimits(max_bytes=100))


@pytest.mark.parametrize(
    "forged",
    [
        lambda: forge_png_size(encode_image(RGB, "PNG"), 5000, 5000),
        lambda: forge_jpeg_size(encode_image(RGB, "JPEG"), 5000, 5000),
        lambda: forge_gif_size(encode_image(RGB, "GIF"), 5000, 5000),
    ],
    ids=["png", "jpeg", "gif"],
)
def test_pixel_cap_is_checked_from_the_header_before_decoding(forged, no_pixel_decoding):
    with pytest.raises(ImageError, match="too many pixels: 5000x5000 = 25000000, the limit is 1000000"):
        decode_image(forged(), ImageLimits(max_pixels=1_000_000))


def test_pillows_own_bomb_error_is_a_client_error(no_pixel_decoding):
    data = forge_png_size(encode_image(RGB, "PNG"), 30000, 30000)
    with (
        mock.patch.object(Image, "MAX_IMAGE_PIXELS", 1000),
        pytest.raises(ImageError, match="too many pixels"),
    ):
        decode_image(data, ImageLimits(max_pixels=10**10))


def test_side_and_zero_size_caps():
    with pytest.raises(ImageError, match="larger than 100 pixels"):
        decode_image(forge_png_size(encode_image(RGB, "PNG"), 200, 2), ImageLimits(max_side=100))
    with pytest.raises(ImageError):
        decode_image(forge_png_size(encode_image(RGB, "PNG"), 0, 12))


def test_formats_list():
    assert FORMATS[:4] == ("JPEG", "PNG", "BMP", "GIF")


# ----------------------------------------------------------------------------- base64
def test_base64_forms():
    raw = bytes(range(256)) * 3
    text = base64.b64encode(raw).decode()
    assert decode_base64(text, 10_000) == raw
    assert decode_base64(text.encode(), 10_000) == raw
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))  # `base64` CLI output
    assert decode_base64(wrapped + "\n", 10_000) == raw
    assert decode_base64("data:image/png;base64," + text, 10_000) == raw
    assert decode_base64(base64.urlsafe_b64encode(raw).decode().rstrip("="), 10_000) == raw
    assert decode_base64(text.rstrip("="), 10_000) == raw


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty image"),
        ("  \n", "empty image"),
        ("abc!", "invalid base64"),
        ("a", "cannot encode whole bytes"),
        ("aGVsbG8=é", "non-ASCII"),
        ("A" * 2000, "encoded image is over 100 bytes"),
    ],
)
def test_bad_base64(text, message):
    with pytest.raises(ImageError, match=message):
        decode_base64(text, 100)


# ----------------------------------------------------------------------------- JPEG draft (reduced decode)
def _photo(width: int, height: int) -> np.ndarray:
    """Smooth content (so a 1/2-scale decode looks like a downscaled full decode), with a marked corner."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    image[: height // 4, : width // 4] = (255, 0, 0)  # top-left quarter red: shows the orientation
    return image.astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_draft_keeps_exif_orientation_and_reports_the_original_size(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = save(Image.fromarray(_photo(1280, 720)), "JPEG", exif=exif, quality=95)
    full = decode_image_reduced(data, draft_size=None)
    reduced = decode_image_reduced(data, draft_size=300)
    assert full.original_hw == full.pixels.shape[:2] == decode_image(data).shape[:2]
    assert reduced.original_hw == full.original_hw  # the frame boxes are reported in
    h, w = full.original_hw
    assert reduced.pixels.shape == (h // 2, w // 2, 3)  # 720 // 300 = 2: half scale, sides stay >= 300
    small = np.asarray(Image.fromarray(full.pixels).resize((w // 2, h // 2), Image.BOX), np.float32)
    assert np.abs(reduced.pixels.astype(np.float32) - small).mean() < 4.0  # same picture, same orientation


@pytest.mark.parametrize(
    ("size", "draft_size", "expected"),
    [
        ((1280, 720), 300, (360, 640)),  # 2x: half
        ((2400, 1300), 300, (325, 600)),  # 4x: quarter
        ((4000, 3000), 300, (375, 500)),  # 8x: eighth (libjpeg's smallest)
        ((1280, 599), 300, (599, 1280)),  # shorter side under 2x: no reduction
        ((1280, 720), None, (720, 1280)),
    ],
)
def test_draft_scale_keeps_both_sides_at_least_the_draft_size(size, draft_size, expected):
    data = save(Image.fromarray(_photo(*size)), "JPEG", quality=80)
    out = decode_image_reduced(data, draft_size=draft_size)
    assert out.pixels.shape[:2] == expected and out.original_hw == (size[1], size[0])


def test_draft_leaves_other_formats_at_full_size():
    out = decode_image_reduced(encode_image(_photo(700, 650), "PNG"), draft_size=300)
    assert out.pixels.shape == (650, 700, 3) and out.original_hw == (650, 700)


def test_draft_checks_the_pixel_cap_on_the_full_size_before_decoding(no_pixel_decoding):
    data = forge_jpeg_size(encode_image(RGB, "JPEG"), 8000, 6000)  # 48 MP claimed; 1/8 would be 0.75 MP
    with pytest.raises(ImageError, match="too many pixels: 8000x6000"):
        decode_image_reduced(data, ImageLimits(max_pixels=40_000_000), draft_size=300)


def test_grayscale_and_cmyk_jpegs_draft_to_rgb():
    gray = save(Image.fromarray(_photo(1280, 720)[:, :, 0]), "JPEG")
    cmyk = save(Image.fromarray(_photo(1280, 720)).convert("CMYK"), "JPEG")
    for data in (gray, cmyk):
        out = decode_image_reduced(data, draft_size=300)
        assert out.pixels.shape == (360, 640, 3) and out.pixels.dtype == np.uint8


# ----------------------------------------------------------------------------- NumPy WARP resize
@pytest.mark.parametrize(
    ("hw", "size"),
    [((1080, 1920), 300), ((375, 500), 300), ((12, 16), 300), ((1, 1), 7), ((300, 300), 300), ((7, 500), 64)],
)
def test_numpy_warp_resize_matches_tensorflow(hw, size):
    import tensorflow as tf

    from predictor.ssd.preprocess import resize_warp, resize_warp_numpy

    image = RNG.integers(0, 256, (*hw, 3), dtype=np.uint8)
    expected = resize_warp(tf.convert_to_tensor(image), size).numpy()
    got = resize_warp_numpy(image, size)
    assert got.dtype == np.float32 and got.shape == (size, size, 3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)  # same arithmetic: equal in practice
    out = np.full((size, size, 3), -1, np.float32)
    assert resize_warp_numpy(image[:, ::-1], size, out=out) is out  # non-contiguous input, given output
    np.testing.assert_allclose(
        out, resize_warp(tf.convert_to_tensor(image[:, ::-1]), size).numpy(), atol=1e-3
    )


@pytest.mark.parametrize(
    "hw", [(375, 500), (720, 1280), (1, 1), (300, 300), (7, 500), (1536, 2048), (1500, 2500)]
)
def test_served_resize_equals_numpy_resize_bit_for_bit(hw, monkeypatch):
    """``resize_warp_uint8`` (the decode threads' resize: TensorFlow's kernel up to TF_RESIZE_MAX_PIXELS,
    NumPy beyond) gives the NumPy resize's float32 values exactly, on both paths, into ``out`` too: with
    the served limit (3.1 MP: the kernel; 3.75 MP: NumPy, the path asserted), then each path forced."""
    from predictor.ssd import preprocess
    from predictor.ssd.preprocess import resize_warp_numpy, resize_warp_uint8

    image = RNG.integers(0, 256, (*hw, 3), dtype=np.uint8)
    expected = resize_warp_numpy(image, 300).view(np.uint32)
    flipped = resize_warp_numpy(image[:, ::-1], 300).view(np.uint32)
    numpy_calls = []

    def counted(*args, **kwargs):
        numpy_calls.append(1)
        return resize_warp_numpy(*args, **kwargs)

    monkeypatch.setattr(preprocess, "resize_warp_numpy", counted)
    served = "numpy" if hw[0] * hw[1] > preprocess.TF_RESIZE_MAX_PIXELS else "tf"
    for limit, path in ((preprocess.TF_RESIZE_MAX_PIXELS, served), (hw[0] * hw[1], "tf"), (0, "numpy")):
        monkeypatch.setattr(preprocess, "TF_RESIZE_MAX_PIXELS", limit)
        numpy_calls.clear()
        got = resize_warp_uint8(image, 300)
        assert got.dtype == np.float32 and got.shape == (300, 300, 3)
        assert np.array_equal(got.view(np.uint32), expected)
        out = np.full((300, 300, 3), -1, np.float32)
        assert resize_warp_uint8(image[:, ::-1], 300, out=out) is out  # non-contiguous input
        assert np.array_equal(out.view(np.uint32), flipped)
        assert len(numpy_calls) == (2 if path == "numpy" else 0), (limit, path)
    assert (served == "numpy") == (hw == (1500, 2500))  # the one size above the 3.2 MP switch


def test_served_resize_takes_tensorflow_path_up_to_the_limit(monkeypatch):
    """Which implementation runs: TensorFlow's kernel at and below ``TF_RESIZE_MAX_PIXELS`` source
    pixels, NumPy above it (``bench/prepare_paths.py``: the kernel copies its whole source first)."""
    from predictor.ssd import preprocess

    calls = []

    def numpy_resize(image: np.ndarray, size: int, out: np.ndarray | None = None) -> None:
        calls.append(image.shape)

    monkeypatch.setattr(preprocess, "resize_warp_numpy", numpy_resize)
    monkeypatch.setattr(preprocess, "TF_RESIZE_MAX_PIXELS", 20 * 30)
    preprocess.resize_warp_uint8(np.zeros((20, 30, 3), np.uint8), 8)
    assert calls == []
    preprocess.resize_warp_uint8(np.zeros((20, 31, 3), np.uint8), 8)
    assert calls == [(20, 31, 3)]


# ----------------------------------------------------------------------------- exact conversions and caps
def test_high_bit_gray_is_scaled_exactly():
    """32-bit float gray: NaN -> 0, clipped to [0, 255], truncated; 16/32-bit integer gray: clipped to
    [0, 65535], then the high byte."""
    floats = np.array([[-5.0, 0.5, 100.7, 300.0, np.nan, 255.0]], np.float32)
    out = to_rgb_array(Image.fromarray(floats, mode="F"))
    assert out.dtype == np.uint8 and out.shape == (1, 6, 3)
    assert out[..., 0].tolist() == [[0, 0, 100, 255, 0, 255]]
    assert (out == out[..., :1]).all()  # gray: the three channels equal
    ints = np.array([[-7, 0, 255, 256, 65535, 70000, 511]], np.int32)
    out = to_rgb_array(Image.fromarray(ints, mode="I"))
    assert out.dtype == np.uint8 and out[..., 0].tolist() == [[0, 0, 0, 1, 255, 255, 1]]
    sixteen = Image.fromarray(np.array([[0, 255, 256, 65535, 32768]], np.uint16))
    assert sixteen.mode.startswith("I;16")
    assert to_rgb_array(sixteen)[..., 2].tolist() == [[0, 0, 1, 255, 128]]


@pytest.mark.parametrize("size", [(1, 1), (7, 3), (500, 375), (1280, 720)])
def test_rgb_pixels_equal_numpys_view_of_the_image_in_one_packed_copy(size):
    """RGB pixels bit for bit as ``np.asarray(image)`` gives them, from one chunk of Pillow's raw encoder
    (the array's memory is that chunk; ``np.asarray``, the fallback, is not called), for an image built
    from pixels and a decoded JPEG."""
    width, height = size
    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    for image in (Image.fromarray(pixels), Image.open(io.BytesIO(save(Image.fromarray(pixels), "JPEG")))):
        image.load()
        with mock.patch.object(np, "asarray", side_effect=AssertionError("fell back to np.asarray")):
            out = rgb_pixels(image)
        assert out.shape == (height, width, 3) and out.dtype == np.uint8
        assert np.array_equal(out, np.asarray(image))
        assert out.base.base is not None and len(out.base.base) == width * height * 3  # the one chunk
        assert not out.flags.writeable
    assert np.array_equal(decode_image(save(Image.fromarray(pixels), "PNG")), pixels)


def test_rgb_pixels_fall_back_to_numpy_where_pillows_raw_encoder_is_not_as_expected(monkeypatch):
    """``Image._getencoder`` is private: where ``rgb_pixels`` cannot use it (here: the images module
    sees a Pillow without it, while ``np.asarray`` still uses the real one) the pixels come from
    ``np.asarray``, unchanged."""
    import types

    from predictor.serving import images

    image = Image.fromarray(RGB)
    monkeypatch.setattr(images, "Image", types.SimpleNamespace())
    out = rgb_pixels(image)
    assert out.dtype == np.uint8 and np.array_equal(out, RGB)


def test_rgb_pixels_of_other_modes_unloaded_images_and_a_failing_encoder_are_numpys():
    """Another mode never reaches RGB's 4-byte packer (it would read past a 1-byte row): ``np.asarray``'s
    pixels; an image not yet loaded is loaded first; an encoder that raises (``OSError`` where Pillow's
    codec is missing) falls back."""
    gray = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    assert np.array_equal(rgb_pixels(gray), np.asarray(gray)) and rgb_pixels(gray).shape == (3, 4)
    lazy = Image.open(io.BytesIO(save(Image.fromarray(RGB), "PNG")))
    assert np.array_equal(rgb_pixels(lazy), RGB)
    import types

    from predictor.serving import images

    def missing(*args):
        raise OSError("encoder raw not available")

    rgb = Image.fromarray(RGB)  # np.asarray still uses Pillow's own encoder; only images' view fails
    with mock.patch.object(images, "Image", types.SimpleNamespace(_getencoder=missing)):
        assert np.array_equal(rgb_pixels(rgb), RGB)


def test_alpha_modes_drop_their_alpha():
    """LA and PA keep their colour and lose the alpha channel."""
    la = Image.fromarray(np.array([[[10, 0], [200, 255]]], np.uint8), mode="LA")
    assert to_rgb_array(la).tolist() == [[[10, 10, 10], [200, 200, 200]]]
    pa = Image.new("PA", (2, 1))
    pa.putpalette([0, 0, 0, 30, 60, 90])
    pa.putdata([(1, 0), (0, 255)])
    assert to_rgb_array(pa).tolist() == [[[30, 60, 90], [0, 0, 0]]]


def test_pixel_arrays_are_checked_exactly():
    limits = ImageLimits(max_bytes=10, max_pixels=12, max_side=4)
    ok = np.zeros((3, 4, 3), np.uint8)  # 4 x 3 = 12 pixels, a side of 4: both at their limit
    assert check_pixel_array(ok, limits) is ok
    cases = [
        (np.zeros((3, 4, 3), np.float32), "expected uint8 pixels, got float32"),
        (np.zeros((3, 4), np.uint8), r"expected an RGB image \[H, W, 3\], got shape \[3, 4\]"),
        (np.zeros((3, 4, 4), np.uint8), r"expected an RGB image \[H, W, 3\], got shape \[3, 4, 4\]"),
        (np.zeros((0, 4, 3), np.uint8), "image has zero size 4x0"),
        (np.zeros((3, 0, 3), np.uint8), "image has zero size 0x3"),
        (np.zeros((2, 5, 3), np.uint8), "image is 5x2, a side is larger than 4 pixels"),
        (np.zeros((5, 2, 3), np.uint8), "image is 2x5, a side is larger than 4 pixels"),
        (np.zeros((4, 4, 3), np.uint8), "image has too many pixels: 4x4 = 16, the limit is 12"),
    ]
    for pixels, message in cases:
        with pytest.raises(ImageError, match=f"^{message}$"):
            check_pixel_array(pixels, limits)
    assert check_pixel_array(np.zeros((1, 1, 3), np.uint8), limits).shape == (1, 1, 3)


def test_decoder_errors_are_described_in_one_line():
    assert _describe(ValueError("")) == "ValueError"
    assert _describe(ValueError("  \n ")) == "ValueError"
    assert _describe(OSError(" first line\nsecond")) == "OSError: first line"
    long = _describe(ValueError("x" * 300))
    assert long == "ValueError: " + "x" * 188 and len(long) == 200


def test_decoder_messages_exact():
    formats = ", ".join(FORMATS)
    with pytest.raises(ImageError, match=r"^empty image \(0 bytes\)$"):
        decode_image(b"")
    png = encode_image(RGB, "PNG")
    assert decode_image(png, ImageLimits(max_bytes=len(png))).shape == (12, 16, 3)  # at the cap: decoded
    with pytest.raises(
        ImageError, match=rf"^encoded image is {len(png)} bytes, the limit is {len(png) - 1}$"
    ):
        decode_image(png, ImageLimits(max_bytes=len(png) - 1))
    with pytest.raises(ImageError) as info:
        decode_image(b"hello world")
    assert info.value.reason == f"not an image in a supported format ({formats})"
    with pytest.raises(ImageError) as info:
        decode_image(encode_image(RGB, "JPEG")[:300])
    assert info.value.reason.startswith(f"not a decodable image ({formats}): ")
    assert "NoneType" not in info.value.reason and len(info.value.reason) > len(formats) + 26
    with pytest.raises(ImageError) as info:
        decode_image(png[:60])
    reason = info.value.reason
    assert reason.startswith("corrupt or truncated PNG image: ") and "NoneType" not in reason, reason


@pytest.mark.parametrize(
    ("shape", "refused"),
    [
        ((2, 2), True),
        ((2, 2, 4), True),
        ((0, 2, 3), True),
        ((2, 0, 3), True),
        ((1, 2, 3), False),
        ((2, 1, 3), False),
    ],
)
def test_a_conversion_of_an_unusable_shape_is_refused(shape, refused):
    """The last guard after decoding: whatever the conversion returned must be a non-empty [H, W, 3]."""
    png = encode_image(RGB, "PNG")
    with mock.patch("predictor.serving.images.to_rgb_array", lambda image: np.zeros(shape, np.uint8)):
        if not refused:
            assert decode_image(png).shape == shape
            return
        with pytest.raises(ImageError) as info:
            decode_image(png)
    assert info.value.reason == f"decoded image has unusable shape {list(shape)}"


def test_served_resize_runs_on_the_cpu_kernel(monkeypatch):
    """The TensorFlow path is pinned to the CPU: where a GPU is visible, eager ops would run there, and
    a GPU kernel may fuse the multiply-adds (not the NumPy resize's bits)."""
    import tensorflow as tf

    from predictor.ssd import preprocess

    devices, real = [], tf.device

    def device(name: str):
        devices.append(name)
        return real(name)

    monkeypatch.setattr(tf, "device", device)
    preprocess.resize_warp_uint8(np.zeros((20, 30, 3), np.uint8), 8)
    assert devices == ["/CPU:0"]
