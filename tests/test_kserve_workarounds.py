"""A KServe upgrade is checked in one place: :mod:`predictor.serving.kserve_workarounds`.

Every workaround depends on KServe source (copied, subclassed or patched); these tests fail when the
installed KServe is not a version whose source was checked, or when that source is not the text that was
checked, naming what to re-read upstream.
"""

from __future__ import annotations

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
