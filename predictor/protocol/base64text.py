"""Base64 text of an image, as it travels in JSON strings (V1 ``b64``, V2 BYTES ``data``).

Decoding is tolerant of what clients send: the standard or URL-safe alphabet, missing padding, line
breaks (the ``base64`` command wraps at 76 characters) and a ``data:image/...;base64,`` prefix.
"""

from __future__ import annotations

import base64
import binascii
import re

from predictor.protocol.errors import MalformedMessage

_WHITESPACE = re.compile(rb"[\t\n\r ]+")
_DATA_URI = re.compile(rb"^data:[\w.+/-]*(;[\w=.-]+)*;base64,", re.ASCII)
#: Everything base64 text may consist of (either alphabet, padding, white space, a data URI prefix).
_BASE64_TEXT = re.compile(rb"(data:[\w.+/-]*(;[\w=.-]+)*;base64,)?[A-Za-z0-9+/_=\-\s]*", re.ASCII)


def encode_base64(data: bytes) -> str:
    """Bytes -> standard, padded base64 text (what every server accepts)."""
    return base64.b64encode(data).decode("ascii")


def max_base64_chars(max_bytes: int) -> int:
    """Length of the base64 text of ``max_bytes`` bytes, plus slack for line breaks and a data URI."""
    return 4 * ((max_bytes + 2) // 3) + max_bytes // 38 + 256


def is_base64_text(data: bytes) -> bool:
    """Whether ``data`` consists only of what base64 text may contain (it may still fail to decode)."""
    return _BASE64_TEXT.fullmatch(data) is not None


def decode_base64(text: str | bytes, max_bytes: int) -> bytes:
    """Base64 text -> bytes, at most ``max_bytes`` of them (checked on the text's length first).

    Raises:
      MalformedMessage: ``invalid base64: ...``, ``empty image ...`` or ``encoded image is over ...``.
    """
    if isinstance(text, str):
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError as e:
            raise MalformedMessage(f"invalid base64: non-ASCII character at position {e.start}") from None
    else:
        raw = bytes(text)
    if len(raw) > max_base64_chars(max_bytes):
        raise MalformedMessage(
            f"encoded image is over {max_bytes} bytes ({len(raw)} base64 characters), "
            f"the limit is {max_bytes}"
        )
    if raw and len(raw) % 4 == 0:  # fast path: plain padded base64, what nearly every client sends
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            pass  # line breaks, URL-safe alphabet, a data URI, or garbage: the tolerant path below
    raw = _DATA_URI.sub(b"", _WHITESPACE.sub(b"", raw), count=1)
    if not raw:
        raise MalformedMessage("empty image (no base64 data)")
    if b"-" in raw or b"_" in raw:
        raw = raw.translate(bytes.maketrans(b"-_", b"+/"))
    missing = -len(raw) % 4
    if missing == 3:
        raise MalformedMessage(f"invalid base64: {len(raw)} characters cannot encode whole bytes")
    try:
        return base64.b64decode(raw + b"=" * missing, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedMessage(f"invalid base64: {e}") from None
