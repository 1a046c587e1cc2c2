"""Our inference routes and readiness on KServe's server (its FastAPI app and data plane).

KServe 0.21's own REST handlers get the most common clients wrong (kserve ``protocol/rest``):

- V2 ``/infer`` parses the body with FastAPI as ``Union[InferenceRequest, bytes]``: a JSON body without
  Content-Type becomes bytes and needs ``Inference-Header-Content-Length`` (400), and binary BYTES
  inputs are turned into UTF-8 text (``InferInput.set_data_from_numpy(binary_data=False)``), which
  raw JPEG bytes are not: 500 ``Failed to encode``. Python's ``json`` behind FastAPI also accepts NaN
  and 400-digit integers (which overflowed later: 500). Its ``/versions/{v}/infer`` answers 501.
- V1 ``:predict`` parses a body without Content-Type as JSON: a raw image sent so is 400.
- Server readiness (``DataPlane.ready``, behind REST ``/v2/health/ready`` and gRPC ``ServerReady``) is
  always true, although the protocol defines it as "all models ready".
- Versioned V2 routes (``/versions/{v}/infer``, metadata, ready) answer 501; here they answer for the
  served version and 404 for another (:mod:`predictor.serving.versions`).

:func:`install` registers ``POST /v1/models/{name}:predict`` and ``POST /v2/models/{name}/infer`` before
KServe registers its routes (Starlette matches routes in order), so ours answer; they parse the body
themselves (:mod:`predictor.serving.codecs`, :mod:`predictor.serving.binary_ext_kserve`) and call the model
like KServe does.
:class:`predictor.serving.kserve_workarounds.TruthfulDataPlane` makes server readiness mean "every
registered model is ready".
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from kserve.protocol.dataplane import DataPlane

from predictor.serving import binary_ext_kserve, codecs, versions
from predictor.serving.errors import ModelNotReady

V1_PREDICT = "/v1/models/{model_name}:predict"
V2_INFER = "/v2/models/{model_name}/infer"
V2_INFER_VERSION = "/v2/models/{model_name}/versions/{model_version}/infer"
V2_METADATA_VERSION = "/v2/models/{model_name}/versions/{model_version}"
V2_READY_VERSION = "/v2/models/{model_name}/versions/{model_version}/ready"


class InferenceRoutes:
    """Handlers of the V1 and V2 inference routes, calling models through ``dataplane``."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def _model(self, model_name: str) -> Any:
        """The ready model called ``model_name``; 404 (``ModelNotFound``) / 503 (``ModelNotReady``)."""
        if not await self.dataplane.model_ready(model_name, disable_predictor_health_check=True):
            raise ModelNotReady(model_name)
        return await self.dataplane.get_model(model_name)

    async def v1_predict(self, model_name: str, request: Request) -> Response:
        """V1 ``:predict``: JSON, or one raw image (any non-JSON or no Content-Type, see
        :func:`predictor.serving.codecs.v1_body_is_json`) whose controls may come as query parameters
        (``?score_threshold=0.3&classes=circle,star``)."""
        model = await self._model(model_name)
        body = codecs.V1Body(await request.body(), tuple(request.query_params.multi_items()))
        headers = dict(request.headers)
        response, response_headers = await model(body, headers=headers)
        return Response(response, media_type="application/json", headers=_extra(response_headers))

    async def v2_infer(self, model_name: str, request: Request, model_version: str | None = None) -> Response:
        """V2 ``/infer``: JSON, or JSON plus binary tensor data (:mod:`predictor.protocol.binary_ext`)."""
        model = await self._model(model_name)
        versions.check(model_name, model_version, versions.version_of(model))
        body = await request.body()
        headers = dict(request.headers)
        output_names = [o["name"] for o in model.get_output_types()]
        infer_request = binary_ext_kserve.parse_request(
            body, headers.get(binary_ext_kserve.HEADER_LENGTH), model_name, output_names
        )
        response, response_headers = await model(infer_request, headers=headers)
        content, json_length = binary_ext_kserve.encode_response(response, infer_request)
        extra = _extra(response_headers)
        if json_length is None:
            return Response(content, media_type="application/json", headers=extra)
        extra["Inference-Header-Content-Length"] = str(json_length)
        return Response(content, media_type="application/octet-stream", headers=extra)

    async def v2_infer_version(self, model_name: str, model_version: str, request: Request) -> Response:
        """Versioned V2 ``/infer``: the served version answers, another one gets 404 (not KServe's 501)."""
        return await self.v2_infer(model_name, request, model_version)

    async def v2_metadata_version(self, model_name: str, model_version: str) -> dict[str, Any]:
        """Versioned V2 model metadata: the served version's, 404 for another."""
        model = self.dataplane.get_model_from_registry(model_name)
        versions.check(model_name, model_version, versions.version_of(model))
        return await self.dataplane.model_metadata(model_name)

    async def v2_ready_version(self, model_name: str, model_version: str) -> dict[str, Any]:
        """Versioned V2 readiness: as ``/v2/models/{m}/ready`` for the served version, 404 for another."""
        model = self.dataplane.get_model_from_registry(model_name)
        versions.check(model_name, model_version, versions.version_of(model))
        if not await self.dataplane.model_ready(model_name):
            raise ModelNotReady(model_name)
        return {"name": model_name, "ready": True}


def _extra(headers: dict[str, str] | None) -> dict[str, str]:
    """Response headers set by the model, less those the response itself sets."""
    skip = {"content-type", "content-length"}
    return {k: v for k, v in (headers or {}).items() if k.lower() not in skip}


def install(app: FastAPI, dataplane: DataPlane) -> None:
    """Register our inference routes on ``app``; call before KServe registers its own (server start)."""
    routes = InferenceRoutes(dataplane)
    app.add_api_route(V1_PREDICT, routes.v1_predict, methods=["POST"], include_in_schema=False)
    app.add_api_route(V2_INFER, routes.v2_infer, methods=["POST"], include_in_schema=False)
    app.add_api_route(V2_INFER_VERSION, routes.v2_infer_version, methods=["POST"], include_in_schema=False)
    app.add_api_route(V2_READY_VERSION, routes.v2_ready_version, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        V2_METADATA_VERSION, routes.v2_metadata_version, methods=["GET"], include_in_schema=False
    )
