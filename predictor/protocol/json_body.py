"""JSON bodies: strict parsing, and the words error messages use for JSON values."""

from __future__ import annotations

from typing import Any

import orjson

from predictor.protocol.errors import MalformedMessage


def load_json(body: bytes | bytearray | memoryview | str, what: str = "body") -> Any:
    """JSON text -> value (orjson: no NaN/Infinity, integers within 64 bits, nesting within 1024).

    Raises:
      MalformedMessage: ``invalid JSON <what>: ...``.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise MalformedMessage(f"invalid JSON {what}: {e}"[:300]) from None


def json_type(value: Any) -> str:
    """What a JSON value is, for error messages: ``an object``, ``a list``, ``a number`` ..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def excerpt(value: Any, limit: int = 200) -> str:
    """``value`` (its repr unless a string) cut to ``limit`` characters, for error messages."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
