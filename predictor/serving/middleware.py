"""The HTTP (ASGI) middlewares of the REST server, and :func:`install`, which puts them on KServe's app.

Order, outermost first (``app.add_middleware`` puts the last one added outside the others; when the
server starts it adds :class:`~predictor.serving.headers.HeaderHygieneMiddleware` outside all of these,
so that every one of them reads cleaned ``x-request-id`` / trace headers, and leaves KServe's own
``TimingMiddleware`` out: :func:`predictor.serving.kserve_workarounds.rest_server_with_error_table`):

1. :class:`RestMetricsMiddleware`: gives every request an ``x-request-id`` and, on the inference
   routes, counts and logs the answer. Outermost of ours, so that it also sees the answers the
   admission middleware gives without calling the app (413, 503) and stamps them with the request id.
2. :class:`~predictor.serving.auth.BearerAuthMiddleware` (only with ``--auth_token_file``): 401 for a
   request without an accepted bearer token, before admission counts or reads its body; inside the
   metrics, so refusals on the inference routes are counted and logged with their request id.
3. :class:`AdmissionMiddleware`: refuses a request before its body is read (413 over
   ``--max_request_bytes``, 503 + ``Retry-After`` over the in-flight byte budget or while the image
   queue is full), counts a streamed body as it arrives, and adds ``Retry-After`` to every 503 from
   further in. Inside the metrics, outside FastAPI: nothing has read the body yet.
4. KServe's FastAPI app: our routes (:mod:`predictor.serving.http_routes`), then KServe's; errors
   raised there are answered from :data:`predictor.serving.errors.STATUSES`.

The byte budget itself (shared with gRPC) and the gRPC interceptor live in
:mod:`predictor.serving.admission`; metrics and the error log line in :mod:`predictor.serving.prometheus`.
All of this runs on the event loop; nothing here blocks.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from predictor.serving import prometheus
from predictor.serving.admission import json_parse_cost
from predictor.serving.errors import RETRY_AFTER_S

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Receive, Scope, Send

    from predictor.serving.admission import ByteBudget
    from predictor.serving.auth import TokenCheck


def install(
    app: FastAPI,
    budget: ByteBudget,
    max_request_bytes: int,
    busy: Callable[[], str | None],
    tokens: TokenCheck | None = None,
    model_version: str | None = None,
) -> None:
    """Add the middlewares to ``app`` in the order of the module docstring (call before the server starts).

    Args:
      budget: the in-flight request-bytes budget, shared with the gRPC server.
      max_request_bytes: the largest REST body (413 above it).
      busy: why an inference request would be refused now (the image queue is full), or None.
      tokens: the accepted bearer tokens (``--auth_token_file``), or None for no check.
      model_version: the served model version, sent in every response's ``x-model-version`` header
        (:class:`predictor.serving.versions.ModelVersionHeader`); None: no header.
    """
    app.add_middleware(AdmissionMiddleware, budget=budget, max_request_bytes=max_request_bytes, busy=busy)
    if tokens is not None:
        from predictor.serving.auth import BearerAuthMiddleware

        app.add_middleware(BearerAuthMiddleware, check=tokens)
    if model_version:
        from predictor.serving.versions import ModelVersionHeader

        app.add_middleware(ModelVersionHeader, version=model_version)
    app.add_middleware(RestMetricsMiddleware)  # added last: outermost


def rest_protocol(path: str) -> str | None:
    """``v1`` / ``v2`` for the REST inference routes, else None."""
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return "v1"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2"
    return None


class RestMetricsMiddleware:
    """ASGI middleware on KServe's FastAPI app.

    Gives every HTTP request, on every route, an ``x-request-id`` (kept when the client sent one; echoed
    in the response). For the inference routes (V1 ``:predict``, V2 ``/infer``) it also counts the
    answer by protocol and status (``ssd_requests_total``; including FastAPI's 422 and KServe's 404/503,
    raised before the model is called) and logs one JSON line, with the error message, for every 4xx/5xx.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _header(scope, b"x-request-id")
        if request_id is None:
            request_id = prometheus.new_request_id()
            scope = {**scope, "headers": [*scope["headers"], (b"x-request-id", request_id.encode())]}
        protocol = rest_protocol(scope.get("path", ""))
        if protocol is None:  # health, metadata, /metrics: the id only
            await self.app(scope, receive, _with_request_id(send, request_id))
            return
        state: dict[str, Any] = {"status": 500, "body": b"", "done": False}
        start = time.perf_counter()

        def finish() -> None:  # once per request, before the last byte of the answer leaves
            if state["done"]:
                return
            state["done"] = True
            status = int(state["status"])
            seconds = time.perf_counter() - start
            prometheus.record(protocol, status, seconds)
            if status >= 400:
                ms = round(seconds * 1000, 1)
                path = scope.get("path", "")
                prometheus.log_error(
                    protocol, status, request_id, _error_text(state["body"]), path=path, ms=ms
                )

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message = _add_request_id(message, request_id)
            elif message["type"] == "http.response.body":
                if state["status"] >= 400 and len(state["body"]) < 2048:
                    state["body"] += message.get("body", b"")[:2048]
                if not message.get("more_body", False):
                    finish()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as e:
            if not state["done"]:
                state["status"], state["body"] = 500, f"{type(e).__name__}: {e}".encode()
            raise
        finally:
            finish()


def _add_request_id(start: dict, request_id: str) -> dict:
    """An ``http.response.start`` message with ``x-request-id`` (unless the app set one)."""
    headers = list(start.get("headers", []))
    if not any(k.lower() == b"x-request-id" for k, _ in headers):
        headers.append((b"x-request-id", request_id.encode()))
    return {**start, "headers": headers}


def _with_request_id(send: Send, request_id: str) -> Send:
    async def send_with_id(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = _add_request_id(message, request_id)
        await send(message)

    return send_with_id


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")[:128]
    return None


def _error_text(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    if isinstance(data, dict) and "detail" in data:
        return orjson.dumps(data["detail"]).decode()
    return body.decode("utf-8", "replace")


# ----------------------------------------------------------------------------- admission
class _Rejected(Exception):
    """Raised from ``receive`` when a streamed body passes a bound (the middleware answers)."""


class AdmissionMiddleware:
    """ASGI middleware admitting REST requests before their bodies are read.

    How and why: :mod:`predictor.serving.admission`.

    Args:
      app: the ASGI app (KServe's FastAPI app).
      budget: the in-flight bytes budget, shared with gRPC.
      max_request_bytes: the largest body (413 above it).
      busy: for inference routes, a reason to refuse at once (503), or None; e.g. the image queue
        is full, so any request would be refused after its body was read and parsed.
    """

    def __init__(
        self,
        app: Any,
        budget: ByteBudget,
        max_request_bytes: int,
        busy: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.app = app
        self.budget = budget
        self.max_request_bytes = max_request_bytes
        self.busy = busy

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_request_bytes:
            prometheus.REJECTED.labels("body_too_large").inc()
            await send_json(send, 413, f"request body is {declared} bytes, {self._limit()}")
            return
        inference = rest_protocol(scope.get("path", "")) is not None
        if inference:
            reason = self.busy()  # counted as offered and refused by the batcher
            if reason is not None:
                prometheus.REJECTED.labels("queue_full").inc()
                await send_json(send, 503, reason, retry_after=True)
                return
        json_left = _json_part(scope)  # bytes of the body still to charge as JSON (None: undecided)
        reserved = declared or 0
        if reserved and not self.budget.try_reserve(reserved):
            prometheus.REJECTED.labels("inflight_bytes").inc()
            if inference:
                prometheus.refused_unread()
            await send_json(send, 503, self.budget.over_budget_reason(reserved), retry_after=True)
            return
        state: dict[str, Any] = {
            "inference": inference,
            "received": 0,
            "reserved": reserved,
            "rejection": None,
            "started": False,
            "json_left": json_left,
            "json_cost": 0,
        }
        try:
            await self._admitted(scope, receive, send, state)
        finally:
            self.budget.release(state["reserved"])

    async def _admitted(self, scope: dict, receive: Any, send: Any, state: dict[str, Any]) -> None:
        """Run the app, counting the body as it is read; answer 413/503 if it passes a bound."""

        async def counting_receive() -> dict:
            message = await receive()
            if message["type"] != "http.request" or state["rejection"] is not None:
                return message
            chunk = message.get("body", b"")
            state["received"] += len(chunk)
            state["json_cost"] += _charge_json(chunk, state)
            received = state["received"]
            charged = received + state["json_cost"]  # what the body costs once parsed
            if received > self.max_request_bytes:
                error = f"request body is over {self.max_request_bytes} bytes, {self._limit()}"
                state["rejection"] = (413, error)
                prometheus.REJECTED.labels("body_too_large").inc()
                raise _Rejected()
            if charged > self.max_request_bytes:
                state["rejection"] = (413, self._json_too_costly(charged))
                prometheus.REJECTED.labels("body_too_large").inc()
                raise _Rejected()
            if charged > state["reserved"]:  # chunked, JSON values, or longer than declared
                more = charged - state["reserved"]
                if not self.budget.try_reserve(more):
                    state["rejection"] = (503, self.budget.over_budget_reason(more))
                    prometheus.REJECTED.labels("inflight_bytes").inc()
                    if state["inference"]:
                        prometheus.refused_unread()
                    raise _Rejected()
                state["reserved"] += more
            return message

        async def guarded_send(message: dict) -> None:
            if state["rejection"] is not None:
                return  # the app's own answer to the failed read (FastAPI: 400) is replaced by ours
            if message["type"] == "http.response.start":
                state["started"] = True
                message = _with_retry_after(message)
            await send(message)

        with contextlib.suppress(_Rejected):  # raised by counting_receive; answered below
            await self.app(scope, counting_receive, guarded_send)
        if state["rejection"] is not None and not state["started"]:
            status, error = state["rejection"]
            await send_json(send, status, error, retry_after=status == 503)

    def _limit(self) -> str:
        return f"the limit is {self.max_request_bytes} (--max_request_bytes)"

    def _json_too_costly(self, charged: int) -> str:
        return (
            f"the JSON of this request body would take over {charged} bytes once parsed (JSON numbers cost "
            f"about 8 times their text), {self._limit()}; send pixels as UINT8 with the binary tensor "
            "extension (Inference-Header-Content-Length) or over gRPC (raw_input_contents), or send "
            "encoded images"
        )


def _json_part(scope: dict) -> float | None:
    """How many leading bytes of an inference request's body are JSON: a V2 body's
    ``Inference-Header-Content-Length`` (binary tensor extension), else all of it; a V1 body by its
    Content-Type, None when only its first bytes can tell (:func:`~predictor.serving.codecs.v1_body_is_json`).
    Other routes: none."""
    protocol = rest_protocol(scope.get("path", ""))
    if protocol is None:
        return 0
    if protocol == "v2":
        length = (_header(scope, b"inference-header-content-length") or "").strip()
        # ASCII digits only: str.isdigit() also takes "²", which int() refuses
        return int(length) if re.fullmatch(r"[0-9]{1,18}", length) else math.inf
    media = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
    if "json" in media:
        return math.inf
    return 0 if media.startswith(("image/", "application/octet-stream")) else None


def _charge_json(chunk: bytes, state: dict[str, Any]) -> int:
    """:func:`~predictor.serving.admission.json_parse_cost` of the JSON bytes of ``chunk``; a V1 body
    without a telling Content-Type is JSON when its first non-blank byte is ``{``."""
    left = state["json_left"]
    if left is None:
        if not chunk.strip():
            return 0
        from predictor.serving.codecs import v1_body_is_json

        left = state["json_left"] = math.inf if v1_body_is_json(chunk, "") else 0
    if left <= 0 or not chunk:
        return 0
    part = chunk if left >= len(chunk) else chunk[: int(left)]
    state["json_left"] = left - len(part)
    return json_parse_cost(part)


def _with_retry_after(start: dict) -> dict:
    """A 503 from further in (KServe's answer to ``Overloaded``, not ready) gets ``Retry-After`` too."""
    headers = list(start.get("headers", []))
    if start.get("status") != 503 or any(k.lower() == b"retry-after" for k, _ in headers):
        return start
    return {**start, "headers": [*headers, (b"retry-after", str(RETRY_AFTER_S).encode())]}


def _content_length(scope: dict) -> int | None:
    for key, value in scope.get("headers", []):
        if key.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def send_json(send: Any, status: int, error: str, retry_after: bool = False) -> None:
    """Send a whole ``{"error": ...}`` JSON response."""
    body = orjson.dumps({"error": error})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
