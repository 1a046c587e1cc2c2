"""The one table of error answers (:data:`predictor.serving.errors.STATUSES`) and its two users.

The expected answers are the protocol's: KServe's V2 REST handlers and gRPC interceptor
(kserve/python/kserve/kserve/errors.py, kserve/protocol/grpc/interceptors.py, KServe 0.21:
InvalidInput 400 / INVALID_ARGUMENT, ModelNotFound 404 / NOT_FOUND, ServerNotReady and ModelNotReady
503 / UNAVAILABLE, NotImplementedError 501 / UNIMPLEMENTED, anything else 500 / INTERNAL), and
``Retry-After`` on 503 (RFC 9110 section 15.6.4). tests/test_server.py and
tests/test_request_admission.py check the same statuses over real servers.
"""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest
from fastapi import FastAPI

from predictor.serving import errors
from predictor.serving.errors import (
    ImageError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    NotReady,
    Overloaded,
    RequestTimeout,
    ServerNotReady,
    ShuttingDown,
)

S = grpc.StatusCode
# error -> (HTTP status, gRPC code, Retry-After)
EXPECTED = [
    (InvalidInput("instances[0]: bad"), 400, S.INVALID_ARGUMENT, False),
    (ImageError("instances[1]: not an image"), 400, S.INVALID_ARGUMENT, False),
    (ModelNotFound("nope"), 404, S.NOT_FOUND, False),
    (NotImplementedError("no"), 501, S.UNIMPLEMENTED, False),
    (Overloaded("overloaded: 3 images in progress"), 503, S.UNAVAILABLE, True),
    (RequestTimeout("not answered within 1 s (--request_timeout_s)"), 503, S.UNAVAILABLE, True),
    (ShuttingDown("the server is shutting down"), 503, S.UNAVAILABLE, True),
    (NotReady("model ssd is not ready"), 503, S.UNAVAILABLE, True),
    (ModelNotReady("ssd"), 503, S.UNAVAILABLE, True),
    (ServerNotReady("warming up"), 503, S.UNAVAILABLE, True),
    (RuntimeError("bug"), 500, S.INTERNAL, False),
    (ValueError("bug"), 500, S.INTERNAL, False),
]
IDS = [type(e).__name__ for e, *_ in EXPECTED]


@pytest.mark.parametrize(("error", "http", "code", "retry_after"), EXPECTED, ids=IDS)
def test_each_error_class_has_the_protocol_status(error, http, code, retry_after):
    status = errors.status_for(error)
    assert (status.http, status.grpc, status.retry_after) == (http, code, retry_after)
    assert errors.status_of(error) == http
    assert errors.is_expected(error) is (http < 500 or http == 503)


@pytest.mark.parametrize(("error", "http", "code", "retry_after"), EXPECTED, ids=IDS)
def test_grpc_error_carries_the_table_code_and_the_message(error, http, code, retry_after):
    converted = errors.grpc_error(error)
    if http == 500:  # KServe answers INTERNAL without the text of an internal error
        assert converted is error
        return
    assert isinstance(converted, errors.GrpcStatusError)
    assert (converted.status_code, converted.details) == (code, str(error))


def _app_raising(error: BaseException) -> FastAPI:
    app = FastAPI()

    @app.post("/raise")
    async def raise_it() -> None:
        raise error

    errors.install_rest_handlers(app)
    return app


async def _post(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post("/raise")


@pytest.mark.parametrize(("error", "http", "code", "retry_after"), EXPECTED, ids=IDS)
def test_rest_handlers_answer_from_the_table(error, http, code, retry_after):
    response = asyncio.run(_post(_app_raising(error)))
    assert response.status_code == http
    if http != 500:  # 500: FastAPI's own error page (the server adds KServe's generic handler)
        assert response.json() == {"error": str(error)}
    assert ("retry-after" in response.headers) is retry_after
    if retry_after:
        assert response.headers["retry-after"] == str(errors.RETRY_AFTER_S)


def test_the_server_installs_the_table_after_kserve_handlers():
    """KServe adds its handlers when its REST server starts; ours must replace them, not be replaced."""
    from predictor.serving.kserve_workarounds import rest_server_with_error_table

    server_class = rest_server_with_error_table()
    app = FastAPI()
    server_class._add_exception_handlers(object.__new__(server_class), app)
    for cls in errors.STATUSES:
        assert app.exception_handlers[cls] is errors._rest_handler, cls
    assert Exception in app.exception_handlers, "KServe's generic 500 handler is kept"
