"""The serving runtime's exceptions, and the one table saying what each answers on REST and gRPC.

Every module of :mod:`predictor.serving` raises its errors from here; KServe's own classes are
re-exported so that a raiser never imports ``kserve.errors`` itself. Messages name the field or the
flag at fault (``instances[3]: ...``, ``... (--request_timeout_s)``).

Hierarchy (each a KServe class, so KServe's own handlers would answer the same)::

    kserve InvalidInput   400 / INVALID_ARGUMENT   the client's request is wrong; do not retry it
      ImageError                                   the image bytes themselves (images.py)
    MalformedMessage      400 / INVALID_ARGUMENT   a wire-format fault (predictor.protocol); the
                                                   codecs re-raise it as InvalidInput, this entry
                                                   is the backstop
    kserve ModelNotFound  404 / NOT_FOUND          no model of that name
      ModelVersionNotFound                         the model is there, not that version
    NotImplementedError   501 / UNIMPLEMENTED
    kserve ServerNotReady 503 / UNAVAILABLE        retry later (``Retry-After``)
      Overloaded                                   too much work admitted (batcher.py)
        RequestTimeout                             past ``--request_timeout_s``
        ShuttingDown                               SIGTERM: the server is draining
        NotReady                                   the model is loading or stopping
    kserve ModelNotReady  503 / UNAVAILABLE        KServe's data plane: the model is not ready
    anything else         500 / INTERNAL

Where the table is used: :func:`install_rest_handlers` answers each class on the REST app with
``{"error": message}``, its status and ``Retry-After``; :func:`grpc_error` turns an exception of a
gRPC request into the status the KServe gRPC interceptor sends; :func:`status_of` labels metrics,
error log lines and trace spans. Refusals before a request reaches the model (413 body too large,
503 over the in-flight byte budget, gRPC RESOURCE_EXHAUSTED) are answered by the admission code
(:mod:`predictor.serving.middleware`, :mod:`predictor.serving.admission`) without an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_interceptor.exceptions import GrpcException
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady, ServerNotReady

from predictor.protocol.errors import MalformedMessage

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

__all__ = [
    "RETRY_AFTER_S",
    "STATUSES",
    "ErrorStatus",
    "GrpcStatusError",
    "ImageError",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "ModelVersionNotFound",
    "NotReady",
    "Overloaded",
    "RequestTimeout",
    "ServerNotReady",
    "ShuttingDown",
    "grpc_error",
    "install_rest_handlers",
    "is_expected",
    "status_for",
    "status_of",
]

#: Seconds a client is asked to wait before retrying a 503 (``Retry-After``, RFC 9110 section 10.2.3).
RETRY_AFTER_S = 1


class ImageError(InvalidInput):
    """The client's image bytes are unusable (400); ``reason`` says why, without the instance name."""


class ModelVersionNotFound(ModelNotFound):
    """A versioned V2 request (REST ``/versions/{v}/...``, gRPC ``model_version``) names a version this
    server does not serve: 404 / NOT_FOUND, naming the version it does serve."""

    def __init__(self, model_name: str, requested: str, served: str) -> None:
        super().__init__(model_name)
        self.reason = (
            f"model_version {requested[:64]!r}: model {model_name!r} is served at version {served!r} "
            "only (the other version may be served by another revision: canary)"
        )

    def __str__(self) -> str:
        return self.reason


class Overloaded(ServerNotReady):
    """The server cannot take this request now (HTTP 503, gRPC UNAVAILABLE); retrying later may work.

    A ``ServerNotReady`` so KServe's own handlers agree with :data:`STATUSES`; ``reason`` is what
    KServe's gRPC interceptor sends (``ServerNotReady`` itself lacks it).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class RequestTimeout(Overloaded):
    """The request ran past its time limit (``--request_timeout_s``): 503."""


class ShuttingDown(Overloaded):
    """The server is stopping; the request was not (or not completely) served: 503."""


class NotReady(Overloaded):
    """The model is still loading or already stopping: 503 / gRPC UNAVAILABLE."""


@dataclass(frozen=True)
class ErrorStatus:
    """What one class of error answers: HTTP status, gRPC code, and whether to send ``Retry-After``."""

    http: int
    grpc: grpc.StatusCode
    retry_after: bool = False


#: Error class -> answer. Looked up along the exception's MRO (most derived class first).
STATUSES: dict[type[BaseException], ErrorStatus] = {
    InvalidInput: ErrorStatus(400, grpc.StatusCode.INVALID_ARGUMENT),
    MalformedMessage: ErrorStatus(400, grpc.StatusCode.INVALID_ARGUMENT),
    ModelNotFound: ErrorStatus(404, grpc.StatusCode.NOT_FOUND),
    NotImplementedError: ErrorStatus(501, grpc.StatusCode.UNIMPLEMENTED),
    ServerNotReady: ErrorStatus(503, grpc.StatusCode.UNAVAILABLE, retry_after=True),
    ModelNotReady: ErrorStatus(503, grpc.StatusCode.UNAVAILABLE, retry_after=True),
}
#: Anything not in :data:`STATUSES`: a server fault.
INTERNAL = ErrorStatus(500, grpc.StatusCode.INTERNAL)


def status_for(error: BaseException) -> ErrorStatus:
    """The :data:`STATUSES` entry of ``error``'s most derived listed class, else :data:`INTERNAL`."""
    for cls in type(error).__mro__:
        status = STATUSES.get(cls)
        if status is not None:
            return status
    return INTERNAL


def status_of(error: BaseException) -> int:
    """The HTTP status answered for ``error`` (gRPC answers are counted under the same numbers)."""
    return status_for(error).http


def is_expected(error: BaseException) -> bool:
    """True for a client's error or an overload (4xx, 503): one log line, no traceback."""
    http = status_of(error)
    return http < 500 or http == 503


class GrpcStatusError(GrpcException):
    """An error of a gRPC request carrying its :data:`STATUSES` code; KServe's interceptor aborts the
    call with ``status_code`` and ``details``."""


def grpc_error(error: BaseException) -> BaseException:
    """``error`` as the gRPC status :data:`STATUSES` gives it; an internal error is returned unchanged
    (KServe answers INTERNAL without its text)."""
    status = status_for(error)
    if status is INTERNAL:
        return error
    return GrpcStatusError(str(error), status.grpc)


def install_rest_handlers(app: FastAPI) -> None:
    """Answer every class of :data:`STATUSES` on ``app`` with ``{"error": message}``, its status and
    ``Retry-After`` where the table says so. Must run after KServe's own handlers are added (they are
    replaced for the same classes)."""
    for cls in STATUSES:
        app.add_exception_handler(cls, _rest_handler)


async def _rest_handler(_request: Request, error: Exception) -> JSONResponse:
    from fastapi.responses import JSONResponse

    status = status_for(error)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status.retry_after else None
    return JSONResponse({"error": str(error)}, status_code=status.http, headers=headers)
