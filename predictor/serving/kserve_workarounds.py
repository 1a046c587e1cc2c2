"""Every place the predictor changes KServe's own behaviour, in one module, for KServe 0.21.

pyproject.toml pins ``kserve==0.21.*``. Each workaround below depends on KServe source that a release may
change; :data:`UPSTREAM` names that source (object and file in github.com/kserve/kserve) and the
sha256 of its text (``inspect.getsource``) per KServe version checked. ``tests/test_kserve_workarounds.py``
fails when the installed KServe is not a recorded version or its source differs: on an upgrade, re-read
each object named there, adapt the workaround, and record the new hashes
(``python -m predictor.serving.kserve_workarounds`` prints them).

1. :func:`install_server_classes`: ``ModelServer.start`` builds its servers from the module attributes
   ``kserve.model_server.RESTServer`` / ``GRPCServer``; we replace both.

   - :func:`rest_server_with_error_table`: a ``RESTServer`` whose ``_add_exception_handlers`` installs
     :func:`predictor.serving.errors.install_rest_handlers` after KServe's own (KServe adds them when the
     server starts, in ``create_application``), so every error answers from ``errors.STATUSES``, and
     whose ``_add_middlewares`` leaves KServe's ``TimingMiddleware`` out (why: its docstring).
   - :func:`admitting_grpc_server`: a ``GRPCServer`` whose ``start`` is KServe's, copied, with
     :class:`~predictor.serving.admission.GrpcAdmissionInterceptor` added first (KServe's ``start``
     builds its ``grpc.aio`` server with a fixed interceptor tuple).

2. :func:`set_grpc_receive_limit`: ``GRPCServer`` takes its message limits from ``vars(args)``, KServe's
   own module-level parse of the command line (``kserve.model_server.args``), not from ``ModelServer``;
   we write ``--grpc_max_receive_message_length`` (our default) there.
3. :class:`TruthfulDataPlane`: ``DataPlane.ready`` (REST ``/v2/health/ready``, gRPC ``ServerReady``)
   always says ready; ours says "at least one model, and every model ready".

Our inference routes (:mod:`predictor.serving.http_routes`) are not a patch: they are registered on
KServe's app before ``create_application`` registers KServe's, and Starlette matches in order; that
ordering is recorded here too (``RESTServer.create_application``).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from grpc import aio

from predictor.serving import errors
from predictor.serving.admission import (
    ByteBudget,
    CallLimiter,
    GrpcAdmissionInterceptor,
    grpc_concurrency,
)
from predictor.serving.options import ServingOptions
from predictor.serving.versions import VersionedDataPlane

if TYPE_CHECKING:
    from fastapi import FastAPI
    from kserve.protocol.rest.server import RESTServer

log = logging.getLogger(__name__)

#: The KServe series these workarounds are written for (pyproject.toml's pin).
KSERVE_SERIES = "0.21"


@dataclass(frozen=True)
class Upstream:
    """KServe source a workaround depends on: ``module`` + ``qualname``, in ``file`` of kserve/kserve."""

    module: str
    qualname: str
    file: str
    why: str


#: What the workarounds depend on, with the upstream file each is in.
DEPENDS_ON: tuple[Upstream, ...] = (
    Upstream(
        "kserve.model_server",
        "ModelServer.start",
        "python/kserve/kserve/model_server.py",
        "builds RESTServer / GRPCServer from module attributes; GRPCServer(kwargs=vars(args))",
    ),
    Upstream(
        "kserve.protocol.grpc.server",
        "GRPCServer.start",
        "python/kserve/kserve/protocol/grpc/server.py",
        "copied in admitting_grpc_server with our interceptor added",
    ),
    Upstream(
        "kserve.protocol.grpc.server",
        "GRPCServer.__init__",
        "python/kserve/kserve/protocol/grpc/server.py",
        "the attributes the copied start reads (_data_plane, _kwargs, _port ...)",
    ),
    Upstream(
        "kserve.protocol.rest.server",
        "RESTServer._add_exception_handlers",
        "python/kserve/kserve/protocol/rest/server.py",
        "extended by rest_server_with_error_table",
    ),
    Upstream(
        "kserve.protocol.rest.server",
        "RESTServer._add_middlewares",
        "python/kserve/kserve/protocol/rest/server.py",
        "extended by rest_server_with_error_table (header hygiene outermost, TimingMiddleware left out)",
    ),
    Upstream(
        "kserve.protocol.rest.server",
        "RESTServer.create_application",
        "python/kserve/kserve/protocol/rest/server.py",
        "handlers added at start, after our routes (http_routes.install)",
    ),
    Upstream(
        "kserve.protocol.dataplane",
        "DataPlane.ready",
        "python/kserve/kserve/protocol/dataplane.py",
        "overridden by TruthfulDataPlane",
    ),
    Upstream(
        "kserve.protocol.dataplane",
        "DataPlane.model_metadata",
        "python/kserve/kserve/protocol/dataplane.py",
        "extended by predictor.serving.versions.VersionedDataPlane (versions)",
    ),
    Upstream(
        "kserve.protocol.grpc.servicer",
        "InferenceServicer.ModelInfer",
        "python/kserve/kserve/protocol/grpc/servicer.py",
        "wrapped by predictor.serving.versions.VersionedServicer (model_version)",
    ),
    Upstream(
        "kserve.protocol.grpc.servicer",
        "InferenceServicer.ModelMetadata",
        "python/kserve/kserve/protocol/grpc/servicer.py",
        "wrapped by predictor.serving.versions.VersionedServicer (versions)",
    ),
    Upstream(
        "kserve.protocol.grpc.servicer",
        "InferenceServicer.ModelReady",
        "python/kserve/kserve/protocol/grpc/servicer.py",
        "wrapped by predictor.serving.versions.VersionedServicer (model_version)",
    ),
)

#: KServe version -> {``module:qualname``: sha256 of its source}, as checked by hand against the
#: workarounds above.
UPSTREAM: dict[str, dict[str, str]] = {
    "0.21.0": {
        "kserve.model_server:ModelServer.start": (
            "efa96502018b04e9e1908fd8734fbddc84071d24256ae4cbd25d0e31bdd27d84"
        ),
        "kserve.protocol.grpc.server:GRPCServer.start": (
            "f4ea7b4eb6f0d9f7ac4947c7bda31531f4bf870529f9de0964a2dad2f6a7fb5e"
        ),
        "kserve.protocol.grpc.server:GRPCServer.__init__": (
            "d2f75891584958f5dc6572c2897a684c5c1e02834ec68d55314e25c577edbdd3"
        ),
        "kserve.protocol.rest.server:RESTServer._add_exception_handlers": (
            "ca0a28c1b356a6eb905d3cd11e2eaf431235a84ec2d1649cba07f2be48c27bc1"
        ),
        "kserve.protocol.rest.server:RESTServer._add_middlewares": (
            "eb71860ac9500c56d880d745367d2afe7edf315ef81a1f8e0e12921ee160f4df"
        ),
        "kserve.protocol.rest.server:RESTServer.create_application": (
            "f821f63b402457eb46c56d064d42f08d80bae9078b7a7087ff1ff0ab92fb6eb4"
        ),
        "kserve.protocol.dataplane:DataPlane.ready": (
            "092ec924c2558e836744a1e2bef4812805d68e21cd6369672aa2bbea24bf202d"
        ),
        "kserve.protocol.dataplane:DataPlane.model_metadata": (
            "df238ff202a15b32922f2e4c70c172ddf760c5d6411de90a1f90da112407c72c"
        ),
        "kserve.protocol.grpc.servicer:InferenceServicer.ModelInfer": (
            "49bf48c9159ebe9f774b162212c855f6fae6bd1ef72198efcaa66350c03a4efa"
        ),
        "kserve.protocol.grpc.servicer:InferenceServicer.ModelMetadata": (
            "5a8a0d47b9ee471ff1980ba037261df6b74d594a03594cd972da470450c798a6"
        ),
        "kserve.protocol.grpc.servicer:InferenceServicer.ModelReady": (
            "97f41a95d064a5430f1588de06c25e6e86635f3b7d72ba6bcef4849a04049ae9"
        ),
    },
}


def source_sha256(module: str, qualname: str) -> str:
    """sha256 (hex) of the source text of ``module``'s ``qualname`` as installed."""
    import importlib

    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def installed_hashes() -> dict[str, str]:
    """``module:qualname`` -> :func:`source_sha256` for every entry of :data:`DEPENDS_ON`."""
    return {f"{u.module}:{u.qualname}": source_sha256(u.module, u.qualname) for u in DEPENDS_ON}


# ----------------------------------------------------------------------------- 1. server classes
def install_server_classes(
    budget: ByteBudget,
    grpc_front: tuple[aio.ServerInterceptor, ...] = (),
    grpc_waiting: int = ServingOptions.grpc_max_waiting_calls,
    grpc_wait_s: float | None = None,
) -> None:
    """Make ``ModelServer.start`` build our REST and gRPC servers (call before it starts); ``grpc_front``:
    interceptors run before admission (metadata hygiene, authentication); ``grpc_waiting`` calls may
    wait up to ``grpc_wait_s`` for a place to read their message (:func:`admitting_grpc_server`)."""
    import kserve.model_server

    kserve.model_server.RESTServer = rest_server_with_error_table()
    kserve.model_server.GRPCServer = admitting_grpc_server(budget, grpc_front, grpc_waiting, grpc_wait_s)


def rest_server_with_error_table() -> type[RESTServer]:
    """KServe's ``RESTServer`` that, after adding KServe's middlewares, removes KServe's
    ``TimingMiddleware`` (``timing_asgi``) and adds
    :class:`~predictor.serving.headers.HeaderHygieneMiddleware` outside the others (the outermost:
    nothing, KServe's logging included, sees a raw ``x-request-id`` or trace header), and after adding
    KServe's exception handlers replaces them with :func:`predictor.serving.errors.install_rest_handlers`
    (KServe adds both when the server starts, ``create_application``).

    Why ``TimingMiddleware`` is left out: per request it calls ``getrusage(RUSAGE_SELF)`` twice (the
    kernel sums the CPU time of every thread of the process, TensorFlow's busy ones included), matches
    the path against every route to name it, and logs two ``kserve.trace`` lines (wall seconds, and the
    whole process's CPU seconds over the request, which counts every concurrent request's work too). It
    was the event loop's largest single cost per request in a profile of the served demo model
    (``py-spy``, V1 c=16); request latency is in ``ssd_request_seconds`` and the error log line instead."""
    from kserve.protocol.rest.server import RESTServer
    from timing_asgi import TimingMiddleware

    from predictor.serving import headers

    class TableErrorsRESTServer(RESTServer):
        def _add_middlewares(self, app: FastAPI) -> None:
            super()._add_middlewares(app)
            app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not TimingMiddleware]
            app.add_middleware(headers.HeaderHygieneMiddleware)  # added last: outermost

        def _add_exception_handlers(self, app: FastAPI) -> None:
            super()._add_exception_handlers(app)
            errors.install_rest_handlers(app)

    return TableErrorsRESTServer


#: gRPC server options beyond KServe's: BDP probing off, so that every HTTP/2 stream's window stays at
#: 64 KiB until its call asks for its message (:func:`admitting_grpc_server`; ``bench/grpc_waiting.py``).
GRPC_SERVER_OPTIONS: tuple[tuple[str, int], ...] = (("grpc.http2.bdp_probe", 0),)


def admitting_grpc_server(
    budget: ByteBudget,
    front: tuple[aio.ServerInterceptor, ...] = (),
    max_waiting: int = ServingOptions.grpc_max_waiting_calls,
    max_wait_s: float | None = None,
) -> type:
    """KServe's ``GRPCServer`` with :class:`GrpcAdmissionInterceptor` in front of its interceptors, and
    ``front`` (header hygiene, authentication) in front of that: its ``start`` copied with ours added first
    (outermost) and KServe's servicer replaced by :class:`~predictor.serving.versions.VersionedServicer`
    (model versions), everything else unchanged but two server options:

    - ``grpc.http2.bdp_probe`` 0: the HTTP/2 stream window stays 64 KiB, so a call that has not been
      given a place to read its message (waiting, or refused) holds at most that much of it in the server
      (BDP probing raises every stream's window to at least 4 MiB, which a waiting call then fills; a
      call that reads opens its window to its whole message either way: docs/request-model.md);
    - at most ``max_waiting`` ``ModelInfer`` calls wait, each up to ``max_wait_s``, for one of the
      :func:`grpc_concurrency` places (:class:`CallLimiter`)."""
    from concurrent import futures

    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.server import GRPCServer

    from predictor.serving.versions import VersionedServicer

    class AdmittingGRPCServer(GRPCServer):
        async def start(self, max_workers: int) -> None:
            servicer = VersionedServicer(self._data_plane, self._model_repository_extension)
            receive_limit = self._kwargs.get("grpc_max_receive_message_length")
            concurrency = grpc_concurrency(budget.limit, receive_limit or budget.limit)
            limiter = CallLimiter(concurrency, max_waiting, max_wait_s)
            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(
                    *front,
                    GrpcAdmissionInterceptor(budget, limiter),
                    LoggingInterceptor(),
                    ExceptionToStatusInterceptor(),
                ),
                options=[
                    ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                    ("grpc.max_receive_message_length", receive_limit),
                    *GRPC_SERVER_OPTIONS,
                ],
            )
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
            listen_addr = f"[::]:{self._port}"
            self._server.add_insecure_port(listen_addr)
            log.info(
                "gRPC server on %s, %d workers, admission by request bytes, at most %d ModelInfer calls "
                "reading at once (--max_inflight_bytes / --grpc_max_receive_message_length + 1), %d waiting "
                "(--grpc_max_waiting_calls) up to %s",
                listen_addr,
                max_workers,
                concurrency,
                limiter.max_waiting,
                "their deadline" if max_wait_s is None else f"{max_wait_s:g} s",
            )
            await self._server.start()
            await self._server.wait_for_termination()

    return AdmittingGRPCServer


# ----------------------------------------------------------------------------- 2. gRPC limit
def set_grpc_receive_limit(limit: int) -> None:
    """The gRPC server's receive limit (bytes), where KServe's ``GRPCServer`` reads it."""
    from kserve import model_server

    model_server.args.grpc_max_receive_message_length = limit


# ----------------------------------------------------------------------------- 3. readiness
class TruthfulDataPlane(VersionedDataPlane):
    """KServe's data plane whose server readiness is "at least one model, and every model ready" (and whose
    model metadata lists the served version: :class:`~predictor.serving.versions.VersionedDataPlane`)."""

    async def ready(self) -> bool:
        models = list(self.model_registry.get_models().values())
        return bool(models) and all(bool(getattr(m, "ready", False)) for m in models)


def installed_version() -> str:
    """The installed KServe's version (its distribution's metadata)."""
    from importlib.metadata import version

    return version("kserve")


if __name__ == "__main__":
    print(f'    "{installed_version()}": {{')
    for name, digest in installed_hashes().items():
        print(f'        "{name}": "{digest}",')
    print("    },")
