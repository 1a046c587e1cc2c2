"""The served model version on every protocol (one server serves one version of one model).

The version is :func:`predictor.ssd.weights.model_version` of the model directory (its ``VERSION`` file,
else a digest of the weights), read once at start-up. It is reported:

- in every REST response's :data:`~predictor.protocol.wire.MODEL_VERSION_HEADER` header
  (:class:`ModelVersionHeader`, all routes: inference, metadata, health, errors);
- in the initial metadata of every gRPC call, answers and refusals alike (:class:`GrpcModelVersion`, in
  front of the interceptors that refuse: authentication UNAUTHENTICATED, admission RESOURCE_EXHAUSTED /
  INVALID_ARGUMENT), and in ``ModelInferResponse.model_version`` (:class:`VersionedServicer`);
- in V2 model metadata ``versions`` (REST via :meth:`VersionedDataPlane.model_metadata`, gRPC via
  :class:`VersionedServicer`) and each V2 response's ``model_version``
  (:func:`predictor.serving.codecs.encode_v2`);
- in ``ssd_model_info{model, version}`` (:mod:`predictor.serving.prometheus`).

A versioned V2 request (REST ``/v2/models/{m}/versions/{v}/...``, gRPC ``model_version``) is answered
when ``v`` is the served version and gets 404 / NOT_FOUND (:class:`~.errors.ModelVersionNotFound`)
otherwise; an empty gRPC ``model_version`` means "whatever is served". KServe 0.21 itself answers every
versioned request with 501 (REST ``NotImplementedError``) and ignores gRPC's ``model_version``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import grpc
from grpc import aio
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc.servicer import InferenceServicer
from starlette.types import ASGIApp, Receive, Scope, Send

from predictor.protocol.wire import MODEL_VERSION_HEADER
from predictor.serving.errors import ModelNotFound, ModelVersionNotFound


def version_of(model: Any) -> str | None:
    """The version a registered model serves (None for a model without one)."""
    version = getattr(model, "version", None)
    return str(version) if version else None


def check(model_name: str, requested: str | None, served: str | None) -> None:
    """Nothing when ``requested`` is empty or the ``served`` version; else ModelVersionNotFound (404)."""
    if requested and requested != served:
        raise ModelVersionNotFound(model_name, requested, served or "(none)")


class ModelVersionHeader:
    """ASGI middleware: every HTTP response carries ``x-model-version: <version>``."""

    def __init__(self, app: ASGIApp, version: str) -> None:
        self.app = app
        self.header = (MODEL_VERSION_HEADER.encode(), version.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_version)


class Metadatum(NamedTuple):
    """One metadata pair, shaped like gRPC's (a tuple with ``key`` and ``value``)."""

    key: str
    value: str


class GrpcModelVersion(aio.ServerInterceptor):
    """gRPC interceptor: every call carries ``x-model-version: <version>``, in its trailing metadata (set
    before anything else runs, so a refusal by a later interceptor carries it as REST's errors carry the
    header) and in its initial metadata with a response (put it in front of the other interceptors;
    :class:`VersionedServicer` sends none of its own)."""

    def __init__(self, version: str) -> None:
        # Key/value pairs with .key and .value, as gRPC's own metadata: KServe's servicer reads the
        # context's trailing metadata into the request headers by attribute (kserve/utils/utils.py
        # to_headers).
        self.metadata = (Metadatum(MODEL_VERSION_HEADER, version),)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        return handler if handler is None else _announcing(handler, self.metadata)


def _announcing(handler: grpc.RpcMethodHandler, metadata: tuple) -> grpc.RpcMethodHandler:
    """``handler`` whose behaviour (any kind) carries ``metadata`` on every answer: in the trailing
    metadata of every call (set first, so a refusal by a later interceptor or the servicer has it), and
    in the initial metadata once there is a response to send. A call refused before any response stays
    a Trailers-Only answer, which gRPC's retry policies (gRFC A6) and proxies may still retry; sending
    headers first would commit it."""
    for kind, factory in (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    ):
        behavior = getattr(handler, kind)
        if behavior is None:
            continue
        if kind.endswith("stream"):

            async def announced(request: Any, context: Any, behavior: Callable = behavior) -> Any:
                context.set_trailing_metadata(metadata)
                first = True
                async for item in behavior(request, context):
                    if first:
                        await context.send_initial_metadata(metadata)
                        first = False
                    yield item

        else:

            async def announced(request: Any, context: Any, behavior: Callable = behavior) -> Any:
                context.set_trailing_metadata(metadata)
                response = await behavior(request, context)
                await context.send_initial_metadata(metadata)
                return response

        return factory(
            announced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class VersionedDataPlane(DataPlane):
    """KServe's data plane whose model metadata lists the model's version (``versions: [v]``)."""

    async def model_metadata(self, model_name: str) -> dict[str, Any]:
        metadata = await super().model_metadata(model_name)
        version = version_of(self.get_model_from_registry(model_name))
        if version:
            metadata["versions"] = [version]
        return metadata


class VersionedServicer(InferenceServicer):
    """KServe's gRPC servicer that checks ``model_version`` / ``version`` (NOT_FOUND for another one) and
    fills ``versions`` and ``model_version`` (the initial metadata: :class:`GrpcModelVersion`)."""

    async def _announce(self, model_name: str, requested: str, context: Any) -> str | None:
        """The served version, after checking the requested one."""
        try:
            version = version_of(self._data_plane.get_model_from_registry(model_name))
        except ModelNotFound:
            return None  # KServe's own call below answers NOT_FOUND for the name
        check(model_name, requested, version)
        return version

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        version = await self._announce(request.model_name, request.model_version, context)
        response = await super().ModelInfer(request, context)
        if version:
            response.model_version = version
        return response

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        version = await self._announce(request.name, request.version, context)
        response = await super().ModelMetadata(request, context)
        if version:
            response.versions.append(version)
        return response

    async def ModelReady(self, request: Any, context: Any) -> Any:
        await self._announce(request.name, request.version, context)
        return await super().ModelReady(request, context)
