"""Admission before reading: the in-flight request-bytes budget and the body limit, in front of KServe.

Unit tests drive :class:`AdmissionMiddleware` with a fake ASGI app; the server tests hold a request
in flight deterministically (its headers sent, its body not) on a real server on loopback.
Retry-After on 503: RFC 9110 section 10.2.3. uvicorn reads and discards a body the app did not read
after the answer (uvicorn/protocols/http/httptools_impl.py, ``on_body`` once ``response_complete``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import grpc
import orjson
import pytest
from serving_fixtures import encode_image, start_server

from predictor.serving import prometheus
from predictor.serving.admission import (
    JSON_LIST_COST,
    JSON_VALUE_COST,
    ByteBudget,
    CallLimiter,
    grpc_concurrency,
    json_parse_cost,
)
from predictor.serving.middleware import AdmissionMiddleware

V1 = "/v1/models/ssd:predict"
BUDGET = 1_000_000


# ----------------------------------------------------------------------------- unit
class Recorder:
    """An ASGI ``send`` that keeps the response."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body = b""

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message["headers"])
        else:
            self.body += message.get("body", b"")

    @property
    def error(self) -> str:
        return orjson.loads(self.body)["error"]


def scope(length: int | None, path: str = V1) -> dict:
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http", "path": path, "headers": headers}


def chunks(sizes: list[int]):
    """An ASGI ``receive`` streaming bodies of these sizes (more_body until the last)."""
    pending = list(sizes)

    async def receive() -> dict:
        size = pending.pop(0)
        return {"type": "http.request", "body": b"x" * size, "more_body": bool(pending)}

    return receive


async def never_receive() -> dict:
    raise AssertionError("the body must not be read")


async def reading_app(scope: dict, receive, send) -> None:
    """Reads the whole body, then answers 200 (what KServe's V1 handler does first)."""
    while True:
        message = await receive()
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def fastapi_like_app(scope: dict, receive, send) -> None:
    """Turns a failed body read into its own 400, as FastAPI does for a body parameter (V2 infer)."""
    try:
        await reading_app(scope, receive, send)
    except Exception:
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send(
            {"type": "http.response.body", "body": b'{"detail": "There was an error parsing the body"}'}
        )


def run(middleware: AdmissionMiddleware, s: dict, receive) -> Recorder:
    send = Recorder()
    asyncio.run(middleware(s, receive, send))
    return send


def rejected(reason: str) -> float:
    return prometheus.REJECTED.labels(reason)._value.get()


def refused_offers() -> float:
    """``ssd_offered_images_total{outcome="refused"}`` of this process."""
    return prometheus.OFFERED.labels("refused")._value.get()


def test_a_declared_body_over_the_limit_gets_413_unread():
    mw = AdmissionMiddleware(reading_app, ByteBudget(BUDGET), max_request_bytes=1000)
    response = run(mw, scope(1001), never_receive)
    assert response.status == 413
    assert response.error == "request body is 1001 bytes, the limit is 1000 (--max_request_bytes)"


def test_a_declared_body_over_the_budget_gets_503_with_retry_after_unread():
    budget = ByteBudget(BUDGET)
    assert budget.try_reserve(600_000)  # another request in flight
    before, offers = rejected("inflight_bytes"), refused_offers()
    response = run(
        AdmissionMiddleware(reading_app, budget, max_request_bytes=10**7), scope(500_000), never_receive
    )
    assert response.status == 503 and response.headers[b"retry-after"] == b"1"
    assert response.error == (
        "overloaded: 600000 request bytes in flight, 500000 more would pass the limit of 1000000 "
        "(--max_inflight_bytes); retry later"
    )
    assert rejected("inflight_bytes") == before + 1
    assert refused_offers() == offers + 1  # offered load: one image, its body unread
    assert budget.used == 600_000
    # a request without a body (a health check) is never refused by the budget, even a full one
    assert budget.try_reserve(400_000) and budget.used == BUDGET
    health = {"type": "http", "path": "/v2/health/ready", "headers": []}
    assert (
        run(AdmissionMiddleware(reading_app, budget, max_request_bytes=10**7), health, chunks([0])).status
        == 200
    )
    assert budget.used == BUDGET


def test_a_lone_request_is_admitted_whatever_its_size_and_released_after():
    budget = ByteBudget(BUDGET)
    mw = AdmissionMiddleware(reading_app, budget, max_request_bytes=10**7)
    response = run(mw, scope(3 * BUDGET), chunks([BUDGET, BUDGET, BUDGET]))
    assert response.status == 200
    assert budget.used == 0


def test_a_streamed_body_over_the_limit_gets_413_and_is_not_read_further():
    received: list[int] = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            received.append(len(message["body"]))
            if not message.get("more_body"):
                return

    budget = ByteBudget(BUDGET)
    response = run(AdmissionMiddleware(app, budget, max_request_bytes=1000), scope(None), chunks([400] * 10))
    assert response.status == 413
    assert response.error == "request body is over 1000 bytes, the limit is 1000 (--max_request_bytes)"
    assert sum(received) <= 1000
    assert budget.used == 0


@pytest.mark.parametrize("app", [reading_app, fastapi_like_app])
def test_a_chunked_body_is_counted_as_it_streams(app):
    budget = ByteBudget(BUDGET)
    assert budget.try_reserve(900_000)
    response = run(
        AdmissionMiddleware(app, budget, max_request_bytes=10**7), scope(None), chunks([50_000] * 4)
    )
    assert response.status == 503, response.body  # FastAPI's own 400 is replaced
    assert response.headers[b"retry-after"] == b"1"
    assert budget.used == 900_000  # what the streamed request had reserved is back
    budget.release(900_000)
    response = run(
        AdmissionMiddleware(app, budget, max_request_bytes=10**7), scope(None), chunks([50_000] * 4)
    )
    assert response.status == 200 and budget.used == 0


def test_a_full_image_queue_refuses_inference_requests_before_reading():
    reason = "overloaded: 256 images in progress, the limit is 256 (--max_queue_images); retry later"
    mw = AdmissionMiddleware(reading_app, ByteBudget(BUDGET), max_request_bytes=10**7, busy=lambda: reason)
    response = run(mw, scope(100), never_receive)
    assert response.status == 503 and response.error == reason and response.headers[b"retry-after"] == b"1"
    # other routes (metadata, health) are not inference and pass
    assert run(mw, scope(2, path="/v2/models/ssd"), chunks([2])).status == 200


def test_a_503_from_the_app_gets_retry_after():
    async def overloaded_app(scope, receive, send):
        await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"x")]})
        await send({"type": "http.response.body", "body": b"{}"})

    response = run(AdmissionMiddleware(overloaded_app, ByteBudget(BUDGET), 10**7), scope(2), chunks([2]))
    assert response.status == 503 and response.headers[b"retry-after"] == b"1"
    assert (
        b"retry-after"
        not in run(AdmissionMiddleware(reading_app, ByteBudget(BUDGET), 10**7), scope(2), chunks([2])).headers
    )


def test_budget_accounting():
    budget = ByteBudget(100)
    assert budget.activity() == (False, 0)
    assert budget.try_reserve(1) and budget.activity() == (True, 1)
    budget.release(1)
    assert budget.activity() == (False, 1)
    assert budget.try_reserve(500)  # alone: admitted
    assert not budget.try_reserve(1)
    budget.release(500)
    assert budget.try_reserve(60) and budget.try_reserve(40) and not budget.try_reserve(1)
    with pytest.raises(ValueError, match=r"^the in-flight bytes limit must be positive, got 0$"):
        ByteBudget(0)


def test_admission_edges_counts_and_the_refusal_body():
    """Bodies of exactly --max_request_bytes pass (declared and streamed); each refusal is counted under
    its reason; a refusal is a complete JSON answer; other scope types pass through both middlewares."""
    from predictor.serving.middleware import RestMetricsMiddleware

    assert (
        run(AdmissionMiddleware(reading_app, ByteBudget(BUDGET), 1000), scope(1000), chunks([1000])).status
        == 200
    )
    assert (
        run(
            AdmissionMiddleware(reading_app, ByteBudget(BUDGET), 1000), scope(None), chunks([600, 400])
        ).status
        == 200
    )
    before = rejected("body_too_large")
    response = run(AdmissionMiddleware(reading_app, ByteBudget(BUDGET), 1000), scope(1001), never_receive)
    assert rejected("body_too_large") == before + 1
    assert response.headers[b"content-type"] == b"application/json"
    assert (
        response.headers[b"content-length"] == str(len(response.body)).encode()
        and b"retry-after" not in response.headers
    )
    run(AdmissionMiddleware(reading_app, ByteBudget(BUDGET), 1000), scope(None), chunks([800, 800]))
    assert rejected("body_too_large") == before + 2
    before = rejected("queue_full")
    run(
        AdmissionMiddleware(reading_app, ByteBudget(BUDGET), 10**7, busy=lambda: "full"),
        scope(5),
        never_receive,
    )
    assert rejected("queue_full") == before + 1
    seen = []

    async def app(s, receive, send):
        seen.append((s, receive, send))

    async def receive():
        return {}

    async def send(message):
        return None

    lifespan = {"type": "lifespan"}
    for middleware in (AdmissionMiddleware(app, ByteBudget(BUDGET), 10), RestMetricsMiddleware(app)):
        asyncio.run(middleware(lifespan, receive, send))
        assert seen.pop() == (lifespan, receive, send)


# ----------------------------------------------------------------------------- request ids and counts
def requests_counted(protocol: str, status: int) -> tuple[float, float]:
    """(ssd_requests_total, ssd_request_errors_total) of one protocol and status."""
    return (
        prometheus.REQUESTS.labels(protocol, str(status))._value.get(),
        prometheus.ERRORS.labels(protocol, str(status))._value.get(),
    )


def answering(status: int, body: bytes, chunked: bool = False, headers=()):
    """An ASGI app answering ``status`` with ``body`` (in two pieces when ``chunked``)."""

    async def app(scope: dict, receive, send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        if chunked:
            await send({"type": "http.response.body", "body": body[:3], "more_body": True})
            body_rest = body[3:]
        else:
            body_rest = body
        await send({"type": "http.response.body", "body": body_rest})

    return app


def with_id(s: dict, request_id: bytes) -> dict:
    return {**s, "headers": [*s["headers"], (b"x-request-id", request_id)]}


def test_every_request_gets_an_id_kept_when_the_client_sent_one():
    from predictor.serving.middleware import RestMetricsMiddleware

    seen: list[str] = []

    async def app(scope: dict, receive, send) -> None:
        seen.append(dict(scope["headers"]).get(b"x-request-id", b"").decode())
        await answering(200, b"{}")(scope, receive, send)

    for path in (V1, "/v2/models/ssd/infer", "/v2/health/ready"):
        response = run(RestMetricsMiddleware(app), scope(2, path), chunks([2]))
        assert (
            response.status == 200
            and len(seen[-1]) == 16
            and response.headers[b"x-request-id"] == seen[-1].encode()
        )
        response = run(RestMetricsMiddleware(app), with_id(scope(2, path), b"client-id-7"), chunks([2]))
        assert response.headers[b"x-request-id"] == b"client-id-7" and seen[-1] == "client-id-7"
    long = run(RestMetricsMiddleware(app), with_id(scope(2), b"x" * 300), chunks([2]))
    assert long.headers[b"x-request-id"] == b"x" * 128  # echoed cut to 128 characters
    # an id the app set itself is not doubled
    own = run(
        RestMetricsMiddleware(answering(200, b"{}", headers=[(b"x-request-id", b"app")])),
        scope(2),
        chunks([2]),
    )
    assert own.headers[b"x-request-id"] == b"app"


@pytest.mark.parametrize(
    ("path", "protocol"),
    [(V1, "v1"), ("/v2/models/ssd/infer", "v2"), ("/v2/models/ssd", None), ("/v1/models/ssd", None),
     ("/v2/models/ssd/ready", None), ("/metrics", None)],
)  # fmt: skip
def test_rest_protocol_of_a_path(path, protocol):
    from predictor.serving.middleware import rest_protocol

    assert rest_protocol(path) == protocol


@pytest.mark.parametrize("chunked", [False, True])
def test_inference_answers_are_counted_and_errors_logged_once(chunked, caplog):
    from predictor.serving.middleware import RestMetricsMiddleware

    cases = [
        (V1, "v1", 200, b'{"predictions": []}', None),
        ("/v2/models/ssd/infer", "v2", 400, b'{"error": "instances[0]: bad"}', "instances[0]: bad"),
        (V1, "v1", 422, b'{"detail": [{"loc": ["body"]}]}', '[{"loc":["body"]}]'),
        (V1, "v1", 503, b"not json", "not json"),
        (V1, "v1", 404, b'["a list"]', '["a list"]'),
    ]
    for path, protocol, status, body, logged in cases:
        before = requests_counted(protocol, status)
        caplog.clear()
        with caplog.at_level("WARNING"):
            response = run(
                RestMetricsMiddleware(answering(status, body, chunked)),
                with_id(scope(2, path), b"r1"),
                chunks([2]),
            )
        assert response.status == status and response.body == body
        after = requests_counted(protocol, status)
        assert after[0] - before[0] == 1 and after[1] - before[1] == (1 if status >= 400 else 0)
        lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
        if logged is None:
            assert lines == []
            continue
        (line,) = lines
        assert {k: line[k] for k in ("event", "request_id", "protocol", "status", "path", "error")} == {
            "event": "request_error", "request_id": "r1", "protocol": protocol, "status": status,
            "path": path, "error": logged,
        }  # fmt: skip
        assert isinstance(line["ms"], float) and line["ms"] >= 0
    # other routes are not counted
    before = requests_counted("v1", 200), requests_counted("v2", 200)
    run(RestMetricsMiddleware(answering(200, b"{}")), scope(2, "/v2/health/ready"), chunks([2]))
    assert (requests_counted("v1", 200), requests_counted("v2", 200)) == before


def test_an_app_that_raises_is_counted_as_a_500_with_its_error(caplog):
    from predictor.serving.middleware import RestMetricsMiddleware

    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    before = requests_counted("v1", 500)
    with caplog.at_level("WARNING"), pytest.raises(RuntimeError):
        run(RestMetricsMiddleware(broken), with_id(scope(2), b"r2"), chunks([2]))
    after = requests_counted("v1", 500)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)

    (line,) = [orjson.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    assert line["error"] == "RuntimeError: boom" and line["status"] == 500 and line["request_id"] == "r2"

    async def broken_midway(scope, receive, send):  # a 200 started, then the app fails: a 500 for us
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("midway")

    before_200, before_500 = requests_counted("v1", 200), requests_counted("v1", 500)
    with pytest.raises(RuntimeError):
        run(RestMetricsMiddleware(broken_midway), scope(2), chunks([2]))
    assert requests_counted("v1", 500)[0] - before_500[0] == 1 and requests_counted("v1", 200) == before_200


# ----------------------------------------------------------------------------- gRPC interceptor, in process
COUNTED = "/inference.GRPCInferenceService/ModelInfer"


@contextlib.asynccontextmanager
async def interceptor_channel(interceptor, handlers: dict):
    """A grpc.aio server on loopback with only ``interceptor`` in front of ``handlers`` (method name ->
    handler of ``inference.GRPCInferenceService``); yields a channel to it."""
    server = grpc.aio.server(interceptors=(interceptor,))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


async def outcome(call) -> bytes | tuple:
    """A call's reply, or its RpcError's (code, details)."""
    try:
        return await call
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details()


async def until_inside(limiter: CallLimiter, calls: int = 1) -> None:
    """Wait (at most 30 s) until ``calls`` calls hold a reading place."""
    for _ in range(3000):
        if limiter.inside == calls:
            return
        await asyncio.sleep(0.01)


NOT_COUNTED = "/inference.GRPCInferenceService/ServerReady"


def run_interceptor(budget: ByteBudget, calls, parse=None) -> list:
    """A grpc.aio server on loopback with only :class:`GrpcAdmissionInterceptor` in front of two raw-bytes
    methods (the counted ModelInfer and an uncounted one) whose handler records ``budget.used`` while it
    runs; ``calls`` is a list of (method, payload). Returns per call the reply, or the RpcError's
    (code, details)."""
    from predictor.serving.admission import GrpcAdmissionInterceptor

    async def echo(request: bytes, context) -> bytes:
        assert context.peer().startswith("ipv4:127.0.0.1:")  # the call's own context is handed on
        return b"%d:%d" % (len(request), budget.used)

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            echo, request_deserializer=parse, response_serializer=lambda reply: b"reply " + reply
        )
        for name in ("ModelInfer", "ServerReady")
    }

    async def main() -> list:
        async with interceptor_channel(GrpcAdmissionInterceptor(budget), handlers) as channel:
            return [
                await outcome(channel.unary_unary(method)(payload, timeout=30)) for method, payload in calls
            ]

    return asyncio.run(main())


def test_grpc_messages_are_counted_while_their_call_runs_and_released_after():
    budget = ByteBudget(1000)
    replies = run_interceptor(
        budget, [(COUNTED, b"x" * 700), (COUNTED, b"y" * 2000), (NOT_COUNTED, b"z" * 5)]
    )
    # the handler saw its own 700 bytes reserved; a lone message passes whatever its size; uncounted: 0
    assert replies == [b"reply 700:700", b"reply 2000:2000", b"reply 5:0"]
    assert budget.used == 0 and budget.activity() == (False, 2)


def test_grpc_messages_over_the_budget_are_refused_unparsed():
    budget = ByteBudget(1000)
    assert budget.try_reserve(600)  # another request in flight
    parsed: list[bytes] = []
    before, offers = rejected("inflight_bytes"), refused_offers()
    replies = run_interceptor(
        budget, [(COUNTED, b"x" * 500), (COUNTED, b"y" * 400)], parse=lambda raw: parsed.append(raw) or raw
    )
    assert replies == [
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "overloaded: 600 request bytes in flight, 500 more would pass the limit of 1000 "
            "(--max_inflight_bytes); retry later",
        ),
        b"reply 400:1000",
    ]
    assert parsed == [b"y" * 400] and rejected("inflight_bytes") == before + 1
    assert budget.used == 600 and refused_offers() == offers + 1  # offered load: one image, unparsed


def test_a_message_that_fails_to_parse_gives_its_bytes_back():
    budget = ByteBudget(1000)

    def parse(raw: bytes) -> bytes:
        raise ValueError("not a ModelInferRequest")

    (reply,) = run_interceptor(budget, [(COUNTED, b"x" * 300)], parse=parse)
    assert reply == (grpc.StatusCode.INVALID_ARGUMENT, "the request message cannot be parsed (ValueError)")
    assert budget.used == 0


def test_grpc_calls_past_the_limiter_are_refused_and_an_empty_call_is_invalid():
    """One place, none waiting: while a ModelInfer call holds the place (its message not sent yet), the
    next is refused with RESOURCE_EXHAUSTED and the limiter's reason (counted as ``grpc_calls``); once
    the message is read the place is free again. A call that sends no message gets INVALID_ARGUMENT."""
    from predictor.serving.admission import GrpcAdmissionInterceptor

    budget, limiter = ByteBudget(10_000), CallLimiter(1, 0)
    before, offers = rejected("grpc_calls"), refused_offers()

    async def echo(request: bytes, context) -> bytes:
        return request

    async def main() -> list:
        handlers = {"ModelInfer": grpc.unary_unary_rpc_method_handler(echo)}
        async with interceptor_channel(GrpcAdmissionInterceptor(budget, limiter), handlers) as channel:
            infer, stream = channel.unary_unary(COUNTED), channel.stream_unary(COUNTED)
            held = stream(timeout=30)  # a call whose message has not come yet: it holds the place
            await until_inside(limiter)
            refused = await outcome(infer(b"b", timeout=30))
            refused_empty = await outcome(stream(iter(()), timeout=30))
            await held.write(b"a")
            await held.done_writing()
            return [
                refused,
                refused_empty,
                await outcome(held),
                await outcome(stream(iter(()), timeout=30)),
            ]

    refused, refused_empty, first, empty = asyncio.run(main())
    reason = (
        "overloaded: 1 gRPC calls are reading their messages (at most 1: --max_inflight_bytes / "
        "--grpc_max_receive_message_length + 1) and 0 wait for a place (at most 0: "
        "--grpc_max_waiting_calls); retry later"
    )
    assert refused == refused_empty == (grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
    assert first == b"a" and empty == (grpc.StatusCode.INVALID_ARGUMENT, "no request message")
    assert rejected("grpc_calls") - before == 2 and budget.used == 0 and limiter.waiting == 0
    # each refusal is offered load the KEDA trigger sees: one image each (their messages were not read)
    assert refused_offers() - offers == 2 and limiter.inside == 0


def test_a_call_that_never_sends_its_message_gives_its_place_back_after_the_wait():
    """A ModelInfer call without a client deadline that takes the one place and never sends its message
    is ended with DEADLINE_EXCEEDED after ``max_wait_s`` (the reason names --request_timeout_s, counted
    as ``grpc_read_timeout``), its place given back: a small call waiting behind it is then served."""
    from predictor.serving.admission import CALL_ARRIVAL, GrpcAdmissionInterceptor

    budget, limiter = ByteBudget(10_000), CallLimiter(1, 4, max_wait_s=1.0)
    before = rejected("grpc_read_timeout")

    seen: list[tuple[float | None, float]] = []  # the call's arrival as the handler sees it, and now

    async def echo(request: bytes, context) -> bytes:
        seen.append((CALL_ARRIVAL.get(), time.monotonic()))
        return request

    async def main() -> tuple:
        handlers = {"ModelInfer": grpc.unary_unary_rpc_method_handler(echo)}
        async with interceptor_channel(GrpcAdmissionInterceptor(budget, limiter), handlers) as channel:
            stalled = channel.stream_unary(COUNTED)()  # no deadline, no message: ever
            await until_inside(limiter)
            await asyncio.sleep(0.3)  # the small call's own wait ends well after the stalled read's
            sent = time.monotonic()
            small = asyncio.ensure_future(outcome(channel.unary_unary(COUNTED)(b"small")))
            for _ in range(3000):
                if limiter.waiting == 1:
                    break
                await asyncio.sleep(0.01)
            # the small call waits behind the stalled one; the stalled one is ended first
            stalled_outcome = await asyncio.wait_for(outcome(stalled), 20)
            return stalled_outcome, await asyncio.wait_for(small, 20), sent

    stalled, small, sent = asyncio.run(main())
    assert stalled == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "the request message did not arrive within 1 s of the call's arrival "
        "(--request_timeout_s); its reading place was given to other calls",
    )
    assert small == b"small"
    # the small call's time counts from its arrival, before it waited the stalled call's second
    ((arrived, handled),) = seen
    assert arrived is not None and sent <= arrived and handled - arrived >= 0.5 * (handled - sent)
    assert rejected("grpc_read_timeout") - before == 1
    assert limiter.inside == 0 and limiter.waiting == 0 and budget.used == 0


def test_call_limiter_counts_every_waiting_call():
    async def scenario() -> tuple[list[str], int, int]:
        limiter = CallLimiter(1, 2)
        events: list[str] = []
        hold = asyncio.Event()

        async def call(name: str) -> None:
            if await limiter.enter() is not None:
                events.append(f"{name} refused")
                return
            events.append(f"{name} in")
            await hold.wait()
            limiter.leave()

        tasks = [asyncio.create_task(call(n)) for n in "abcd"]
        for _ in range(100):
            await asyncio.sleep(0)
        waiting = limiter.waiting
        hold.set()
        await asyncio.gather(*tasks)
        return events, waiting, limiter.waiting

    assert asyncio.run(scenario()) == (["a in", "d refused", "b in", "c in"], 2, 0)


def test_call_limiter_arguments_are_checked():
    for limit, waiting in ((0, 0), (1, -1), (-1, 5)):
        with pytest.raises(ValueError, match=rf"^limit must be positive and max_waiting >= 0, got {limit}, "):
            CallLimiter(limit, waiting)
    assert (CallLimiter(1, 0).limit, CallLimiter(1, 0).max_waiting) == (1, 0)
    assert grpc_concurrency(10, 1) == 11 and grpc_concurrency(10, 0) == 11  # 10 one-byte messages + 1


def test_a_waiting_call_is_refused_past_its_wait_and_a_cancelled_one_leaves_no_trace():
    """A call waits at most ``max_wait_s`` (the timeout reason names --request_timeout_s); a waiting
    call cancelled (its client gone, its deadline passed) leaves the queue; a place handed to a call
    just as it is cancelled goes to the next one."""

    async def scenario() -> tuple:
        limiter = CallLimiter(1, 5, max_wait_s=0.05)
        assert await limiter.enter() is None  # the one place, never given back during the wait
        timed_out = await limiter.enter()
        after_timeout = (limiter.waiting, prometheus.GRPC_WAITING._value.get())

        cancelled = asyncio.create_task(limiter.enter())
        await asyncio.sleep(0)
        assert limiter.waiting == 1
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        after_cancel = limiter.waiting

        handed = asyncio.create_task(limiter.enter())
        nxt = asyncio.create_task(limiter.enter())
        await asyncio.sleep(0)
        limiter.leave()  # the place goes to `handed`, which is cancelled before it runs: on to `nxt`
        handed.cancel()
        results = await asyncio.gather(handed, nxt, return_exceptions=True)
        return timed_out, after_timeout, after_cancel, results, limiter.inside, limiter.waiting

    timed_out, after_timeout, after_cancel, results, inside, waiting = asyncio.run(scenario())
    assert timed_out == (
        "overloaded: no place to read this call's message came within 0.05 s (--request_timeout_s): "
        "1 gRPC calls read theirs at once (--max_inflight_bytes / --grpc_max_receive_message_length + 1); "
        "retry later"
    )
    assert after_timeout == (0, 0.0) and after_cancel == 0
    assert isinstance(results[0], asyncio.CancelledError) and results[1] is None
    assert (inside, waiting) == (1, 0)  # `nxt` holds the one place


def test_the_admitting_grpc_server_is_kserves_with_the_interceptor_first(caplog):
    """KServe's gRPC server class with the interceptor in front (no model loaded): liveness answers, the
    receive limit it is given holds, a ModelInfer over the budget is refused by the interceptor before
    KServe sees it, and one within it reaches KServe's servicer (which knows no model)."""
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension

    from predictor.serving.kserve_workarounds import admitting_grpc_server

    repository = ModelRepository()
    budget = ByteBudget(100_000)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    limits = {"grpc_max_send_message_length": 10_000, "grpc_max_receive_message_length": 5_000}
    server = admitting_grpc_server(budget)(
        port,
        DataPlane(model_registry=repository),
        ModelRepositoryExtension(model_registry=repository),
        limits,
    )

    def infer(size: int) -> grpc.StatusCode:
        tensor = pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(b"x" * size)
        request = pb.ModelInferRequest(model_name="ssd", inputs=[tensor])
        try:
            stub.ModelInfer(request, timeout=30)
        except grpc.RpcError as e:
            return e.code(), e.details()
        return grpc.StatusCode.OK, ""

    async def main():
        task = asyncio.ensure_future(server.start(max_workers=2))
        try:
            await until_started()
            return await asyncio.to_thread(calls)
        finally:
            await server._server.stop(None)
            await asyncio.gather(task, return_exceptions=True)

    async def until_started():
        for _ in range(600):
            if server._server is not None:
                return
            await asyncio.sleep(0.05)

    def calls():
        nonlocal stub
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            live = stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
            too_big = infer(6_000)
            within = infer(100)
            # released when the call's handler returns, which may be just after the client has its
            # answer (KServe aborts the call before its handler unwinds): wait for it (hang guard 60 s)
            deadline = time.monotonic() + 60
            while budget.used and time.monotonic() < deadline:
                time.sleep(0.01)
            assert budget.try_reserve(99_990)  # another request holds nearly all of the budget
            refused = infer(100)
            budget.release(99_990)
            return live, too_big, within, refused

    stub = None
    with caplog.at_level("INFO", logger="predictor.serving.kserve_workarounds"):
        live, too_big, within, refused = asyncio.run(main())
    # 100,000 budget bytes / 5,000-byte messages + 1: at most 21 ModelInfer calls read at once
    started = (
        f"gRPC server on [::]:{port}, 2 workers, admission by request bytes, at most 21 ModelInfer calls"
    )
    assert any(m.startswith(started) for m in caplog.messages), caplog.messages
    assert live
    assert too_big[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "5000" in too_big[1]
    assert within[0] not in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED), within
    assert "ssd" in within[1]  # KServe's own answer: no such model
    assert refused[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max_inflight_bytes" in refused[1]
    assert budget.used == 0


# ----------------------------------------------------------------------------- real server
@pytest.fixture(scope="module")
def budget_server(random_tiny_model_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("budget_server") / "server.log"
    server = start_server(random_tiny_model_dir, log_path, "--max_inflight_bytes", str(BUDGET))
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


def open_request(server, length: int, path: str = V1) -> socket.socket:
    """A request (V1 unless ``path``) whose headers are sent and whose body is not (it holds ``length``
    bytes)."""
    s = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    s.sendall(head.encode())
    return s


def read_response(s: socket.socket) -> tuple[int, dict[bytes, bytes], dict]:
    reply = s.makefile("rb")
    status = int(reply.readline().split()[1])
    headers = {}
    for line in iter(reply.readline, b"\r\n"):
        key, value = line.strip().split(b": ", 1)
        headers[key.lower()] = value
    return status, headers, orjson.loads(reply.read(int(headers[b"content-length"])))


def wait_for_metric(server, name: str, value: float) -> None:
    """Hang guard only (60 s): the metric reaches ``value``."""
    deadline = time.monotonic() + 60
    while server.metric(name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.05)


def grpc_infer(server, payload: bytes, **options):
    opts = [("grpc.max_send_message_length", 128 * 2**20)]
    with grpc.insecure_channel(server.grpc_target, options=opts) as channel:
        return grpc_infer_on(channel, payload)


def grpc_infer_on(channel, payload: bytes):
    """One ModelInfer of ``payload`` as a BYTES element, on ``channel``."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    return pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(small_infer_request(payload), timeout=60)


def test_the_server_refuses_over_budget_before_reading_and_recovers(budget_server, shapes_images):
    import httpx

    offered = 'outcome="refused"'
    holder = open_request(budget_server, 900_000)  # admitted: its 900 KB are reserved
    try:
        wait_for_metric(budget_server, "ssd_inflight_request_bytes", 900_000)
        offers = budget_server.metric("ssd_offered_images_total", offered)
        second = open_request(budget_server, 200_000)  # headers only: the answer cannot need the body
        status, headers, body = read_response(second)
        second.close()
        assert status == 503 and headers[b"retry-after"] == b"1"
        assert body["error"].startswith("overloaded: 900000 request bytes in flight")
        v2 = open_request(budget_server, 200_000, "/v2/models/ssd/infer")
        assert read_response(v2)[0] == 503
        v2.close()
        # each refusal is offered load the KEDA trigger sees, one image each (their bodies unread)
        assert budget_server.metric("ssd_offered_images_total", offered) == offers + 2

        png = encode_image(shapes_images[0], "PNG")
        with pytest.raises(grpc.RpcError) as info:
            grpc_infer(budget_server, png + b"\0" * 200_000)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max_inflight_bytes" in info.value.details()
        # the refusal names the served model version, as the REST 503 does in its header
        assert dict(info.value.trailing_metadata())["x-model-version"] == headers[b"x-model-version"].decode()
        assert budget_server.metric("ssd_rejected_requests_total", 'reason="inflight_bytes"') >= 3
        assert budget_server.metric("ssd_offered_images_total", offered) == offers + 3
        # not an inference route: refused by the budget all the same, but not offered load
        index = open_request(budget_server, 200_000, "/v2/repository/index")
        assert read_response(index)[0] == 503
        index.close()
        assert budget_server.metric("ssd_offered_images_total", offered) == offers + 3
    finally:
        holder.close()  # the client goes away mid-body: its reservation is released
    wait_for_metric(budget_server, "ssd_inflight_request_bytes", 0)

    png = encode_image(shapes_images[0], "PNG")
    response = grpc_infer(budget_server, png)
    assert [o.name for o in response.outputs] and budget_server.metric("ssd_inflight_request_bytes") == 0
    r = httpx.post(budget_server.url + V1, content=png, headers={"content-type": "image/png"}, timeout=60)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def test_a_refused_body_is_drained_and_the_connection_stays_usable(budget_server):
    import httpx

    def local_address(response) -> tuple[str, int] | None:
        """The connection's local (address, port); None once the connection is closed."""
        try:
            return response.extensions["network_stream"].get_extra_info("client_addr")
        except OSError:
            return None

    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=1)) as client:
        big = b'{"instances": ["' + b"A" * (70 * 2**20) + b'"]}'  # over --max_request_bytes (64 MiB)
        r = client.post(budget_server.url + V1, content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.headers.get("connection", "").lower() != "close"
        refused_on = r.extensions["network_stream"], local_address(r)
        r = client.get(budget_server.url + "/v2/health/live")
        assert r.status_code == 200
        # the same TCP connection (keep-alive): httpx's pool handed back the same stream, same local port
        assert (r.extensions["network_stream"], local_address(r)) == refused_on


def test_grpc_messages_over_the_receive_limit_are_refused(budget_server):
    with pytest.raises(grpc.RpcError) as info:
        grpc_infer(budget_server, b"\0" * (65 * 2**20))  # the limit follows --max_request_bytes (64 MiB)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(64 * 2**20) in info.value.details()


def test_start_up_logs_the_resources(budget_server):
    line = next(x for x in budget_server.log().splitlines() if "resources:" in x)
    assert "cpu quota" in line and "memory limit" in line
    assert "max_inflight_bytes 1000000" in line
    assert "automatic: tf_intra_op_threads, tf_inter_op_threads" in line  # decode_threads given (2)
    assert "malloc mmap threshold 8388608, 2 arenas" in line


# ----------------------------------------------------------------------------- JSON charged by parsed size
def body_receive(body: bytes, pieces: int = 3):
    """An ASGI ``receive`` streaming ``body`` in ``pieces`` chunks."""
    step = -(-len(body) // pieces)
    parts = [body[i : i + step] for i in range(0, len(body), step)]

    async def receive() -> dict:
        part = parts.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    return receive


def budget_peak_app(peak: list[int], budget: ByteBudget):
    async def app(scope: dict, receive, send) -> None:
        await reading_app(scope, receive, send)
        peak.append(budget.used)  # what the request holds once read, before it is parsed

    return app


def test_json_parse_cost_counts_values_and_lists():
    assert json_parse_cost(b'{"instances": ["QUJD"]}') == JSON_LIST_COST
    assert json_parse_cost(b"[[0,1,2],[3,4,5]]") == 3 * JSON_LIST_COST + 5 * JSON_VALUE_COST
    assert json_parse_cost(memoryview(b",,")) == 2 * JSON_VALUE_COST


@pytest.mark.parametrize(
    ("path", "headers", "body", "json_bytes"),
    [
        # V2 JSON: every byte is JSON
        (
            "/v2/models/ssd/infer",
            [(b"content-type", b"application/json")],
            b'{"d": [' + b"0," * 999 + b"0]}",
            None,
        ),
        # V2 binary extension: only the JSON header (its length in the header) is charged
        (
            "/v2/models/ssd/infer",
            [(b"inference-header-content-length", b"10")],
            b'{"d": [0]}' + b"," * 5000,
            10,
        ),
        # V1 image: nothing is JSON, whatever its bytes (the Content-Type decides, not the first byte)
        (V1, [(b"content-type", b"image/png")], b"\x89PNG" + b",[" * 3000, 0),
        (V1, [(b"content-type", b"image/png")], b",[" * 3000, 0),
        (V1, [(b"content-type", b"image/png")], b'{"a": [' + b"0," * 500, 0),
        (V1, [(b"content-type", b"application/octet-stream")], b'{"a": [' + b"0," * 500, 0),
        # a parameter that names JSON does not make the media type JSON: the first bytes decide
        (V1, [(b"content-type", b"text/plain; profile=json; q=1")], b"\xff\xd8" + b"," * 3000, 0),
        # not an inference route: nothing is JSON
        ("/v2/repository/index", [(b"content-type", b"application/json")], b"[,[" * 100, 0),
        # V1 without Content-Type: JSON when it starts with "{", else one image
        (V1, [], b'  {"instances": [' + b"0," * 500 + b"0]}", None),
        (V1, [], b"\xff\xd8" + b"," * 3000, 0),
    ],
)
def test_the_json_part_of_a_body_is_charged_by_its_parse_cost(path, headers, body, json_bytes):
    budget, peak = ByteBudget(10**9), []
    s = {"type": "http", "path": path, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
    response = run(AdmissionMiddleware(budget_peak_app(peak, budget), budget, 10**8), s, body_receive(body))
    assert response.status == 200 and budget.used == 0
    json_part = body if json_bytes is None else body[:json_bytes]
    assert peak == [len(body) + json_parse_cost(json_part)]


@pytest.mark.parametrize("value", [b"\xb2", b"\xc2\xb2", b"1e3", b"-5", b"", b"9" * 40])
def test_a_malformed_binary_header_length_charges_the_whole_body_and_releases_it(value):
    """``Inference-Header-Content-Length`` that is not plain ASCII digits (latin-1 "²" passes
    str.isdigit but not int) makes the whole body count as JSON; the bytes reserved are released."""
    body = b'{"d": [0]}' + b"," * 100
    budget, peak = ByteBudget(10**9), []
    headers = [(b"inference-header-content-length", value), (b"content-length", str(len(body)).encode())]
    s = {"type": "http", "path": "/v2/models/ssd/infer", "headers": headers}
    response = run(AdmissionMiddleware(budget_peak_app(peak, budget), budget, 10**8), s, body_receive(body))
    assert response.status == 200 and budget.used == 0
    assert peak == [len(body) + json_parse_cost(body)]


def test_a_json_body_too_costly_to_parse_gets_413_pointing_to_binary_tensors():
    body = b'{"inputs": [{"datatype": "UINT8", "data": [' + b"0," * 20_000 + b"0]}]}"  # 40 KB of text
    budget = ByteBudget(BUDGET)
    mw = AdmissionMiddleware(reading_app, budget, max_request_bytes=100_000)
    s = {"type": "http", "path": "/v2/models/ssd/infer", "headers": [(b"content-type", b"application/json")]}
    response = run(mw, s, body_receive(body, pieces=4))
    assert response.status == 413 and budget.used == 0
    assert response.error.startswith("the JSON of this request body would take over ")
    assert "once parsed (JSON numbers cost about 8 times their text), the limit is 100000" in response.error
    assert "binary tensor extension (Inference-Header-Content-Length) or over gRPC" in response.error
    assert response.error.endswith("over gRPC (raw_input_contents), or send encoded images")
    # the same values as binary tensor data: the bytes only
    binary = b'{"inputs": []}' + bytes(20_001)
    s["headers"] = [(b"inference-header-content-length", b"14")]
    assert run(mw, s, body_receive(binary)).status == 200


def test_grpc_concurrency_keeps_messages_within_the_budget_plus_one():
    assert grpc_concurrency(128 * 2**20, 64 * 2**20) == 3
    assert grpc_concurrency(128 * 2**20, 8 * 2**20) == 17
    assert grpc_concurrency(1_000_000, 64 * 2**20) == 2
    for budget, message in [(128 * 2**20, 40 * 2**20), (10**6, 10**6), (5, 3)]:
        n = grpc_concurrency(budget, message)
        assert (n - 1) * message <= budget < n * message


def test_call_limiter_admits_limit_queues_max_waiting_and_refuses_the_rest():
    async def scenario() -> list[str]:
        limiter = CallLimiter(2, 1)
        events: list[str] = []

        async def call(name: str, hold: asyncio.Event) -> None:
            if await limiter.enter() is not None:
                events.append(f"{name} refused")
                return
            events.append(f"{name} in")
            await hold.wait()
            limiter.leave()

        hold = asyncio.Event()
        tasks = [asyncio.create_task(call(n, hold)) for n in "abcd"]
        await asyncio.sleep(0.01)
        assert limiter.waiting == 1
        assert "2 gRPC calls are reading their messages (at most 2: " in limiter.full_reason()
        assert "and 1 wait for a place (at most 1: --grpc_max_waiting_calls)" in limiter.full_reason()
        hold.set()
        await asyncio.gather(*tasks)
        return events

    assert asyncio.run(scenario()) == ["a in", "b in", "d refused", "c in"]


def test_grpc_calls_in_the_model_hold_no_reading_place(random_tiny_model_dir, tmp_path, shapes_images):
    """gRPC turns a whole message into a buffer before a handler can look at it, so the server bounds
    the ModelInfer calls that are reading theirs (:func:`grpc_concurrency`: budget 1 MB / messages 1 MB
    + 1 = 2); a call gives its place back once its message is read (the byte budget holds the bytes
    from then on). With the model held, three small calls are all admitted (not refused past two),
    health is answered, and all three are served once the model runs again."""
    from concurrent.futures import ThreadPoolExecutor

    from serving_fixtures import wait_until

    server = start_server(
        random_tiny_model_dir,
        tmp_path / "server.log",
        "--max_inflight_bytes",
        "1000000",
        "--grpc_max_receive_message_length",
        "1000000",
        "--batch_wait_ms",
        "1",
        gated=True,
    )
    png = encode_image(shapes_images[0], "PNG")
    try:
        server.wait_ready()
        assert "at most 2 ModelInfer calls reading at once" in server.log()
        server.gate.hold()
        refused = server.metric("ssd_rejected_requests_total", 'reason="grpc_calls"')
        with ThreadPoolExecutor(3) as pool:
            held = [pool.submit(grpc_infer, server, png) for _ in range(3)]
            wait_until(lambda: server.metric("ssd_queue_images") == 3, "all three calls admitted")
            assert all(not call.done() for call in held)
            with grpc.insecure_channel(server.grpc_target) as channel:  # health is not bounded
                from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
                from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
            server.gate.release()
            assert all(call.result().outputs for call in held)
        assert server.metric("ssd_rejected_requests_total", 'reason="grpc_calls"') == refused
        assert grpc_infer(server, png).outputs
    finally:
        server.gate.release()
        server.terminate()


def small_infer_request(payload: bytes):
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    tensor = pb.ModelInferRequest.InferInputTensor(
        name="images", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[payload])
    )
    return pb.ModelInferRequest(model_name="ssd", inputs=[tensor])


def hold_reading_place(channel, payload: bytes, release):
    """A ModelInfer call that takes a reading place and sends its message only once ``release`` is set
    (a stream-unary call on the wire is the same as a unary one); its future."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    def message():
        release.wait(120)
        yield small_infer_request(payload)

    call = channel.stream_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    return call.future(message(), timeout=120)


def test_small_grpc_calls_wait_for_a_reading_place_and_the_waiting_are_bounded(
    random_tiny_model_dir, tmp_path, shapes_images
):
    """Two calls read at once (budget 1 MB / messages 1 MB + 1), 30 may wait, each up to
    --request_timeout_s (300 s: no outcome here may depend on the machine's speed; the timeout itself is
    test_a_waiting_call_is_refused_past_its_wait_and_a_cancelled_one_leaves_no_trace). 32 clients
    sending a small image at the same moment (places + waiting places) are all served, however their
    reads interleave; with both places held by calls whose message has not come, 30 small calls wait
    (``ssd_grpc_waiting_calls``), the next is refused at once with RESOURCE_EXHAUSTED naming both limits,
    and all 32 held or waiting calls are served once the held messages come. The refusal counts one
    refused image of offered load."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from serving_fixtures import wait_until

    server = start_server(
        random_tiny_model_dir,
        tmp_path / "server.log",
        "--max_inflight_bytes",
        "1000000",
        "--grpc_max_receive_message_length",
        "1000000",
        "--grpc_max_waiting_calls",
        "30",
        "--request_timeout_s",
        "300",
    )
    png = encode_image(shapes_images[0], "PNG")
    try:
        server.wait_ready()
        assert (
            "at most 2 ModelInfer calls reading at once (--max_inflight_bytes / "
            "--grpc_max_receive_message_length + 1), 30 waiting (--grpc_max_waiting_calls) up to 300 s"
        ) in server.log()

        def counts() -> tuple[float, float]:
            return (
                server.metric("ssd_rejected_requests_total", 'reason="grpc_calls"'),
                server.metric("ssd_offered_images_total", 'outcome="refused"'),
            )

        # a burst of small calls, 16 times the places: all served
        start = counts()
        barrier = threading.Barrier(32)

        def burst_call(_: int):
            with grpc.insecure_channel(server.grpc_target) as channel:
                grpc.channel_ready_future(channel).result(timeout=60)
                barrier.wait(60)
                return grpc_infer_on(channel, png)

        with ThreadPoolExecutor(32) as pool:
            assert all(r.outputs for r in pool.map(burst_call, range(32)))
        assert counts() == start

        # both places held: 30 small calls wait, the next is refused at once
        release = threading.Event()
        with ThreadPoolExecutor(30) as pool, grpc.insecure_channel(server.grpc_target) as channel:
            holders = [hold_reading_place(channel, png, release) for _ in range(2)]
            waiters = [pool.submit(grpc_infer, server, png)]
            wait_until(lambda: server.metric("ssd_grpc_waiting_calls") == 1, "a small call waiting")
            waiters += [pool.submit(grpc_infer, server, png) for _ in range(29)]
            wait_until(lambda: server.metric("ssd_grpc_waiting_calls") == 30, "30 small calls waiting")
            with pytest.raises(grpc.RpcError) as info:
                grpc_infer(server, png)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert info.value.details() == (
                "overloaded: 2 gRPC calls are reading their messages (at most 2: --max_inflight_bytes / "
                "--grpc_max_receive_message_length + 1) and 30 wait for a place (at most 30: "
                "--grpc_max_waiting_calls); retry later"
            )
            assert counts() == (start[0] + 1, start[1] + 1)
            release.set()
            assert all(h.result().outputs for h in holders) and all(w.result().outputs for w in waiters)
        assert server.metric("ssd_grpc_waiting_calls") == 0

        assert grpc_infer(server, png).outputs
    finally:
        server.terminate()


def test_install_adds_the_middlewares_outermost_first(tmp_path):
    """Metrics and request ids outermost (they see every answer, refusals included), then the version
    header, then the token check, then admission innermost (nearest the app); each with its arguments."""
    from fastapi import FastAPI

    from predictor.serving.auth import BearerAuthMiddleware, TokenCheck
    from predictor.serving.middleware import RestMetricsMiddleware, install
    from predictor.serving.versions import ModelVersionHeader

    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("secret\n")
    budget, tokens = ByteBudget(BUDGET), TokenCheck(tokens_file)

    def busy() -> None:
        return None

    app = FastAPI()
    install(app, budget, 1234, busy, tokens=tokens, model_version="7")
    assert [(m.cls, m.kwargs) for m in app.user_middleware] == [
        (RestMetricsMiddleware, {}),
        (ModelVersionHeader, {"version": "7"}),
        (BearerAuthMiddleware, {"check": tokens}),
        (AdmissionMiddleware, {"budget": budget, "max_request_bytes": 1234, "busy": busy}),
    ]
    plain = FastAPI()
    install(plain, budget, 1234, busy)  # no tokens, no version: neither middleware
    assert [m.cls for m in plain.user_middleware] == [RestMetricsMiddleware, AdmissionMiddleware]


def test_header_helpers_exact():
    """The ASGI header helpers on their edge cases: no headers at all, other letter cases, latin-1
    bytes, non-digit lengths, an app's own Retry-After or request id kept."""
    from predictor.serving import middleware as mw

    assert mw._header({}, b"x-request-id") is None
    long_id = {"headers": [(b"X-Request-Id", b"\xe9" + b"a" * 200)]}
    assert mw._header(long_id, b"x-request-id") == "\xe9" + "a" * 127  # latin-1, cut to 128 characters
    assert mw._content_length({}) is None
    assert mw._content_length({"headers": [(b"Content-Length", b"12")]}) == 12
    assert mw._content_length({"headers": [(b"content-length", b"1e3")]}) is None

    retry = (b"retry-after", str(mw.RETRY_AFTER_S).encode())
    bare = {"type": "http.response.start", "status": 503}
    assert mw._with_retry_after(bare) == {**bare, "headers": [retry]}
    own = {"type": "http.response.start", "status": 503, "headers": [(b"Retry-After", b"9")]}
    assert mw._with_retry_after(own) is own
    fine = {"type": "http.response.start", "status": 200, "headers": []}
    assert mw._with_retry_after(fine) is fine

    assert mw._add_request_id({"type": "http.response.start", "status": 200}, "r1")["headers"] == [
        (b"x-request-id", b"r1")
    ]
    app_id = {"type": "http.response.start", "status": 200, "headers": [(b"X-Request-ID", b"app")]}
    assert mw._add_request_id(app_id, "r1")["headers"] == [(b"X-Request-ID", b"app")]


def test_error_text_of_each_body_form():
    from predictor.serving.middleware import _error_text

    assert _error_text(b'{"error": "bad image"}') == "bad image"
    assert _error_text(b'{"detail": [{"loc": ["body"]}]}') == '[{"loc":["body"]}]'  # FastAPI's 422
    assert _error_text(b'["detail"]') == '["detail"]'  # JSON, but no object: as it is
    assert _error_text(b'{"message": "x"}') == '{"message": "x"}'
    assert _error_text(b"\xff not json") == "\ufffd not json"


def test_send_json_sends_exactly_one_json_answer():
    from predictor.serving.middleware import RETRY_AFTER_S, send_json

    messages: list[dict] = []

    async def send(message: dict) -> None:
        messages.append(message)

    asyncio.run(send_json(send, 413, "too big"))
    asyncio.run(send_json(send, 503, "busy", retry_after=True))
    assert messages == [
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"19")],
        },
        {"type": "http.response.body", "body": b'{"error":"too big"}'},
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"16"),
                (b"retry-after", str(RETRY_AFTER_S).encode()),
            ],
        },
        {"type": "http.response.body", "body": b'{"error":"busy"}'},
    ]


def test_metrics_middleware_times_counts_and_bounds_what_it_logs(monkeypatch, caplog):
    """A fake ``perf_counter``: the request took 12.3456 ms, logged as 12.3 and observed in seconds; an app
    that answers nothing counts as a 500; only the first 2 KB of an error body are kept for the log (a
    JSON error cut there is logged as raw text); other routes still read their body."""
    from predictor.serving import middleware as mw

    ticks = iter([1000.0, 1000.0123456, 2000.0, 2000.5, 3000.0, 3000.0, 4000.0, 4000.0])

    class FakeTime:
        @staticmethod
        def perf_counter() -> float:
            return next(ticks)

    monkeypatch.setattr(mw, "time", FakeTime)
    seconds = prometheus.REQUEST_SECONDS.labels("v1")
    seconds_before = seconds._sum.get()
    with caplog.at_level("WARNING"):
        run(
            mw.RestMetricsMiddleware(answering(400, b'{"error": "bad"}')),
            with_id(scope(2), b"r3"),
            chunks([2]),
        )
    (line,) = [orjson.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    assert line["ms"] == 12.3 and line["error"] == "bad"
    assert seconds._sum.get() - seconds_before == pytest.approx(0.0123456)

    async def silent(scope, receive, send) -> None:
        return None  # no answer at all: uvicorn sends a 500

    before = requests_counted("v1", 500)
    run(mw.RestMetricsMiddleware(silent), scope(2), chunks([2]))
    assert requests_counted("v1", 500)[0] - before[0] == 1

    head = b'{"pad": "' + b"x" * (2048 - 9)  # exactly 2048 bytes, then the rest of the JSON
    assert len(head) == 2048

    async def long_error(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": head, "more_body": True})
        await send({"type": "http.response.body", "body": b'", "error": "hidden"}'})

    caplog.clear()
    with caplog.at_level("WARNING"):
        run(mw.RestMetricsMiddleware(long_error), scope(2), chunks([2]))
    (line,) = [orjson.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    assert line["error"] == head[:500].decode()

    async def echo(scope, receive, send) -> None:
        body = (await receive())["body"]
        await answering(200, body)(scope, receive, send)

    for path in ("/v2/repository/index", V1):
        response = run(mw.RestMetricsMiddleware(echo), scope(2, path), chunks([2]))
        assert response.status == 200 and response.body == b"xx"


def test_an_answer_is_counted_before_its_last_message_leaves(caplog):
    """The last body message may carry no ``body`` and no ``more_body`` (ASGI's defaults: b"" and
    False): the answer is counted, and its error logged, before that message is sent; one body of 2049
    bytes is kept to its first 2048 (a JSON error cut there is logged as raw text)."""
    from predictor.serving.middleware import RestMetricsMiddleware

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b'{"error": "e"}', "more_body": True})
        await send({"type": "http.response.body"})

    before = requests_counted("v1", 400)[0]
    counted_at_last: list[float] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and "body" not in message:
            counted_at_last.append(requests_counted("v1", 400)[0] - before)

    with caplog.at_level("WARNING"):
        asyncio.run(RestMetricsMiddleware(app)(scope(2), chunks([2]), send))
    (line,) = [orjson.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    assert counted_at_last == [1] and line["error"] == "e"

    whole = b'{"pad": "' + b"x" * (2049 - 25) + b'", "error": "E"}'
    assert len(whole) == 2049
    caplog.clear()
    with caplog.at_level("WARNING"):
        run(RestMetricsMiddleware(answering(400, whole)), scope(2), chunks([2]))
    (line,) = [orjson.loads(r.getMessage()) for r in caplog.records if r.getMessage().startswith("{")]
    assert line["error"] == whole[:500].decode()


def test_streamed_refusals_are_exact_and_counted():
    """A streamed body refused part-way: over the budget (503, the exact reason, ``inflight_bytes``) and
    JSON too costly once parsed (413 naming the exact charge, ``body_too_large``)."""
    budget = ByteBudget(100)
    assert budget.try_reserve(60)  # another request in flight
    before = rejected("inflight_bytes")
    png = {"type": "http", "path": V1, "headers": [(b"content-type", b"image/png")]}
    response = run(AdmissionMiddleware(reading_app, budget, 10**6), png, chunks([50]))
    assert response.status == 503 and response.error == (
        "overloaded: 60 request bytes in flight, 50 more would pass the limit of 100 (--max_inflight_bytes); "
        "retry later"
    )
    assert rejected("inflight_bytes") - before == 1 and budget.used == 60

    # the same refusal is offered load on an inference route, not on another route; a 413 is not
    offers = refused_offers()
    run(AdmissionMiddleware(reading_app, budget, 10**6), png, chunks([50]))
    other = {**png, "path": "/v2/repository/index"}
    assert run(AdmissionMiddleware(reading_app, budget, 10**6), other, chunks([50])).status == 503
    assert refused_offers() - offers == 1

    offers = refused_offers()
    before = rejected("body_too_large")
    body = b"[" + b"0," * 10 + b"0]"  # 23 bytes: 10 value separators, 1 list
    charged = len(body) + 10 * JSON_VALUE_COST + JSON_LIST_COST
    response = run(
        AdmissionMiddleware(reading_app, ByteBudget(10**6), 100), scope(None), body_receive(body, 1)
    )
    assert response.status == 413
    assert response.error.startswith(
        f"the JSON of this request body would take over {charged} bytes once parsed"
    )
    assert rejected("body_too_large") - before == 1 and refused_offers() == offers


def test_an_answer_already_started_is_not_replaced_and_a_silent_app_gets_none():
    """An app that started its answer before the body passed a bound keeps it (a second answer cannot
    be sent on the same request); an app that answers nothing gets nothing added."""

    async def starts_then_reads(s: dict, receive, send) -> None:
        assert s["path"] == V1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while (await receive()).get("more_body"):
                pass
        except Exception:  # the middleware's refusal of the read
            return

    budget = ByteBudget(BUDGET)
    response = run(AdmissionMiddleware(starts_then_reads, budget, 10), scope(None), chunks([50]))
    assert (response.status, response.body, budget.used) == (200, b"", 0)

    async def silent(s: dict, receive, send) -> None:
        return None

    response = run(AdmissionMiddleware(silent, budget, 10), scope(None), chunks([5]))
    assert (response.status, response.body, budget.used) == (None, b"", 0)


def test_charge_json_per_chunk():
    """What each chunk of a body is charged as JSON: a V1 body without a telling Content-Type is decided
    by its first non-blank chunk; a binary-extension header charges exactly its last byte."""
    import math

    from predictor.serving.middleware import _charge_json

    v1 = {"json_left": None}
    assert _charge_json(b"  \n", v1) == 0 and v1["json_left"] is None  # blank: still undecided
    assert _charge_json(b' {"a": [1,2]}', v1) == JSON_LIST_COST + JSON_VALUE_COST
    assert v1["json_left"] == math.inf
    image = {"json_left": None}
    assert _charge_json(b"[,", image) == 0 and image["json_left"] == 0  # not "{": one image, no JSON
    assert _charge_json(b",,", image) == 0
    header = {"json_left": 1}  # one byte of the JSON header left in this chunk
    assert _charge_json(b",,", header) == JSON_VALUE_COST and header["json_left"] == 0


def test_a_request_message_without_a_body_counts_as_empty():
    """ASGI lets ``http.request`` omit ``body`` (b"")."""

    async def receive() -> dict:
        return {"type": "http.request"}

    budget = ByteBudget(BUDGET)
    response = run(AdmissionMiddleware(reading_app, budget, 3), scope(None), receive)  # 0 bytes <= 3
    assert (response.status, response.body, budget.used) == (200, b"ok", 0)
