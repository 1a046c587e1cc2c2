"""A KServe upgrade is checked in one place: :mod:`predictor.serving.kserve_workarounds`.

Every workaround depends on KServe source (copied, subclassed or patched); these tests fail when the
installed KServe is not a version whose source was checked, or when that source is not the text that was
checked, naming what to re-read upstream.
"""

from __future__ import annotations

import numpy as np
import pytest

from predictor.serving import kserve_workarounds as kw

INSTALLED = kw.installed_version()


def test_the_installed_kserve_was_checked():
    assert INSTALLED in kw.UPSTREAM, (
        f"kserve {INSTALLED} is installed; the workarounds were checked against {sorted(kw.UPSTREAM)}. "
        "Re-read each object in kserve_workarounds.DEPENDS_ON upstream, adapt the workaround, and record "
        "the hashes that `python -m predictor.serving.kserve_workarounds` prints in UPSTREAM."
    )
    assert INSTALLED.startswith(kw.KSERVE_SERIES + ".")


def test_every_dependency_has_a_recorded_hash():
    for version, hashes in kw.UPSTREAM.items():
        assert set(hashes) == {f"{u.module}:{u.qualname}" for u in kw.DEPENDS_ON}, version


@pytest.mark.parametrize("upstream", kw.DEPENDS_ON, ids=lambda u: u.qualname)
def test_patched_upstream_source_is_the_one_checked(upstream):
    recorded = kw.UPSTREAM.get(INSTALLED, {})
    key = f"{upstream.module}:{upstream.qualname}"
    if key not in recorded:
        pytest.fail(f"kserve {INSTALLED}: no hash recorded for {key}")
    assert kw.source_sha256(upstream.module, upstream.qualname) == recorded[key], (
        f"kserve {INSTALLED} changed {upstream.qualname} ({upstream.file}), which the predictor "
        f"depends on: {upstream.why}. Re-check the workaround in predictor/serving/kserve_workarounds.py."
    )


def test_the_copied_grpc_start_differs_from_upstream_only_by_our_interceptor():
    """The copy in :func:`~predictor.serving.kserve_workarounds.admitting_grpc_server` keeps KServe's
    interceptors and message limits: the server it builds lists ours first, then KServe's."""
    import inspect

    from kserve.protocol.grpc.server import GRPCServer

    upstream = inspect.getsource(GRPCServer.start)
    ours = inspect.getsource(kw.admitting_grpc_server)
    assert "interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor())" in upstream
    assert "GrpcAdmissionInterceptor(budget, limiter),\n                    LoggingInterceptor(),\n" in ours
    for option in ("grpc.max_send_message_length", "grpc.max_receive_message_length"):
        assert option in upstream and option in ours


def test_install_replaces_kservers_server_classes(monkeypatch):
    import kserve.model_server
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.rest.server import RESTServer

    from predictor.serving.admission import ByteBudget

    monkeypatch.setattr(kserve.model_server, "RESTServer", RESTServer)
    monkeypatch.setattr(kserve.model_server, "GRPCServer", GRPCServer)
    kw.install_server_classes(ByteBudget(1024))
    assert kserve.model_server.RESTServer.__name__ == "TableErrorsRESTServer"
    assert issubclass(kserve.model_server.RESTServer, RESTServer)
    assert kserve.model_server.GRPCServer.__name__ == "AdmittingGRPCServer"
    assert issubclass(kserve.model_server.GRPCServer, GRPCServer)


def test_the_grpc_limit_is_written_where_kserve_reads_it(monkeypatch):
    from kserve import model_server

    monkeypatch.setattr(model_server.args, "grpc_max_receive_message_length", 1)
    kw.set_grpc_receive_limit(12345)
    assert vars(model_server.args)["grpc_max_receive_message_length"] == 12345


def test_the_rest_app_has_header_hygiene_outermost_and_no_kserve_timing():
    """KServe's ``_add_middlewares`` adds its ``TimingMiddleware`` (two getrusage calls and two log lines
    per request: why in ``kw.rest_server_with_error_table``); ours takes it out again and puts header
    hygiene outermost."""
    from fastapi import FastAPI
    from timing_asgi import TimingMiddleware

    from predictor.serving.headers import HeaderHygieneMiddleware

    server_class = kw.rest_server_with_error_table()
    server = object.__new__(server_class)
    server.access_log_format = None
    plain = FastAPI()
    server_class.__mro__[1]._add_middlewares(server, plain)  # KServe's own
    assert [m.cls for m in plain.user_middleware] == [TimingMiddleware]
    app = FastAPI()
    server_class._add_middlewares(server, app)
    assert [m.cls for m in app.user_middleware] == [HeaderHygieneMiddleware]


def test_a_served_request_logs_no_kserve_timing_lines(ssd_server):
    """End to end: a V1 request and a metadata request leave none of the ``kserve.trace`` timing lines
    (``... ['http_status:200', 'http_method:POST', 'time:wall']``) KServe's TimingMiddleware writes."""
    import httpx
    from serving_fixtures import MODEL_NAME, b64, encode_image

    start = len(ssd_server.log())
    image = encode_image(np.zeros((40, 60, 3), np.uint8), "PNG")
    with httpx.Client(base_url=ssd_server.url, timeout=120) as client:
        r = client.post(f"/v1/models/{MODEL_NAME}:predict", json={"instances": [{"b64": b64(image)}]})
        assert r.status_code == 200, r.text[:300]
        assert client.get(f"/v2/models/{MODEL_NAME}").status_code == 200
    log = ssd_server.log()[start:]
    assert "requestId: " in log  # KServe's trace logger writes to this log: the check below can fail
    assert "time:wall" not in log and "time:cpu" not in log, log[-2000:]
