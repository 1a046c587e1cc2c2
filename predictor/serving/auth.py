"""Optional bearer-token check, for clusters with neither a mesh nor an authenticating gateway.

``--auth_token_file PATH`` (env ``SSD_AUTH_TOKEN_FILE``; the chart mounts a Secret there) turns it on:
every request must then carry ``Authorization: Bearer <token>`` (gRPC: metadata ``authorization``), where
``<token>`` is one of the file's non-empty lines (several lines let a rotation overlap). Exempt: the
health routes the kubelet and Knative probe and ``/metrics`` (REST ``/``, ``/metrics``,
``/v2/health/live|ready``, ``/v2/models/<name>[/versions/<v>]/ready``, V1 ``/v1/models/<name>``; gRPC
``ServerLive``, ``ServerReady``, ``ModelReady``). Everything else (inference, metadata, model repository)
is checked.

A refused request gets REST 401 with ``WWW-Authenticate: Bearer`` and ``{"error": "unauthenticated"}``
(gRPC ``UNAUTHENTICATED``, same message), whether the header was missing, malformed or wrong: nothing
tells the caller which. The check runs before admission reads or counts the body (REST) or protobuf
parses the message (gRPC), and compares the SHA-256 digest of the token sent with each accepted
token's digest by :func:`hmac.compare_digest`, always all of them: the time taken says neither how much
of a token matched, nor how long the accepted tokens are, nor which one matched.

gRPC refusals are counted in ``ssd_rejected_requests_total{reason="unauthenticated"}`` (REST ones there
and, on the inference routes, in ``ssd_requests_total`` with status 401).

The file is re-read when it changes (a mounted Secret is updated in place by the kubelet), checked at
most once per :data:`RELOAD_INTERVAL_S`; a change that leaves it unreadable or empty keeps the tokens
in use (logged).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
from grpc import aio

log = logging.getLogger(__name__)

#: Seconds between checks whether the token file changed.
RELOAD_INTERVAL_S = 1.0
#: The one message every refusal carries.
REFUSAL = "unauthenticated"

_EXEMPT_PATHS = re.compile(
    r"/|/metrics|/v2/health/(live|ready)|/v2/models/[^/]+(/versions/[^/]+)?/ready|/v1/models/[^/:]+"
)
#: gRPC methods answered without a token (health checks).
GRPC_EXEMPT_METHODS = frozenset(
    f"/inference.GRPCInferenceService/{m}" for m in ("ServerLive", "ServerReady", "ModelReady")
)


class AuthConfigError(ValueError):
    """The token file cannot be used (missing, unreadable, no token in it)."""


def read_tokens(path: str | Path) -> tuple[bytes, ...]:
    """The SHA-256 digests of the file's tokens (one per non-empty line, surrounding spaces stripped).

    Raises:
      AuthConfigError: the file cannot be read or holds no token.
    """
    try:
        text = Path(path).read_bytes()
    except OSError as e:
        raise AuthConfigError(f"cannot read --auth_token_file {path}: {e.strerror or e}") from e
    tokens = [line.strip() for line in text.splitlines() if line.strip()]
    if not tokens:
        raise AuthConfigError(f"--auth_token_file {path} holds no token")
    return tuple(hashlib.sha256(t).digest() for t in tokens)


def exempt_path(path: str) -> bool:
    """Whether a REST path is answered without a token (health and metrics)."""
    return _EXEMPT_PATHS.fullmatch(path) is not None


class TokenCheck:
    """The accepted tokens, from a file re-read when it changes."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._clock = clock
        self._stamp = self._file_stamp()
        self._digests = read_tokens(self.path)
        self._next_check = clock() + RELOAD_INTERVAL_S
        self._lock = threading.Lock()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + RELOAD_INTERVAL_S
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self._digests = read_tokens(self.path)
            except AuthConfigError as e:
                log.warning("%s; keeping the %d token(s) read before", e, len(self._digests))
                return
            log.info("re-read %d token(s) from %s", len(self._digests), self.path)

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` value carries an accepted bearer token (scheme case-insensitive)."""
        self._maybe_reload()
        if authorization is None:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = hashlib.sha256(token.strip().encode("latin-1", "replace")).digest()
        ok = False
        for digest in self._digests:  # no early exit: the time does not say which token matched
            ok |= hmac.compare_digest(given, digest)
        return ok


# ----------------------------------------------------------------------------- REST (ASGI)
class BearerAuthMiddleware:
    """ASGI middleware: 401 + ``WWW-Authenticate: Bearer`` for a request without an accepted token
    on a non-exempt route, before the body is read."""

    def __init__(self, app: Any, check: TokenCheck) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or exempt_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        authorization = None
        for key, value in scope.get("headers", []):
            if key.lower() == b"authorization":
                authorization = value.decode("latin-1")
                break
        if self.check.allows(authorization):
            await self.app(scope, receive, send)
            return
        from predictor.serving import prometheus

        prometheus.REJECTED.labels("unauthenticated").inc()
        body = orjson.dumps({"error": REFUSAL})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b"Bearer"),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------------- gRPC
class GrpcBearerAuth(aio.ServerInterceptor):
    """gRPC interceptor: UNAUTHENTICATED for a call without an accepted token in its ``authorization``
    metadata on a non-exempt method; the refused message is never parsed."""

    def __init__(self, check: TokenCheck) -> None:
        self.check = check

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method in GRPC_EXEMPT_METHODS:
            return await continuation(handler_call_details)
        authorization = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str):
                authorization = value
                break
        if self.check.allows(authorization):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        from predictor.serving import prometheus

        prometheus.REJECTED.labels("unauthenticated").inc()

        async def refuse(requests: Any, context: aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)

        # Request-streaming, as the admission interceptor does: the refusal runs before the message is
        # read, so an unauthenticated caller cannot make the server buffer messages past the call limit.
        return grpc.stream_unary_rpc_method_handler(
            refuse,
            request_deserializer=lambda raw: None,  # not parsed
            response_serializer=handler.response_serializer,
        )
