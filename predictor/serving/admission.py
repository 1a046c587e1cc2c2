"""Admission before reading: request bodies are bounded one by one and all together, before they are read.

KServe reads a REST body whole (``await request.body()``) and JSON-parses it (V2: into pydantic
objects) before the model sees anything, and gRPC parses each message before the servicer runs. So
every check the model does comes after the memory is spent. This module checks first:

- :class:`ByteBudget`: the bytes of request bodies in flight (admitted and not answered yet),
  shared by REST and gRPC. A request is admitted when its bytes fit, or when nothing else is in
  flight (so one request up to ``--max_request_bytes`` is always served).
- :class:`~predictor.serving.middleware.AdmissionMiddleware` (ASGI, REST; it lives with the other HTTP
  middlewares): a declared ``Content-Length`` over ``--max_request_bytes`` gets 413 and one over the
  budget 503 with ``Retry-After`` at once, before a byte of the body is read; so does any inference
  request while the model's image queue is full (``busy``). A chunked body is counted as it streams:
  past either bound the request gets the same 413 / 503. The reservation is held until the answer has
  been sent (the parsed body lives that long). uvicorn reads and discards the rest of a refused body, so
  the client gets its answer on an open connection. Every 503 (also those answered further in: image
  queue full, not ready, time limit) carries ``Retry-After``.
- A JSON body costs more than its bytes once parsed (a Python list of numbers takes 8 bytes per value,
  the NumPy array made of it 8 more; a JSON number is 2-4 bytes of text): the middleware charges the
  JSON part of an inference body by :func:`json_parse_cost` as it streams, against the budget and
  against ``--max_request_bytes`` (413 naming the binary tensor extension and gRPC past it).
- gRPC turns a whole message into one buffer before a handler can look at it, so the byte budget
  cannot refuse a message before it is in memory. :class:`CallLimiter` therefore lets at most
  :func:`grpc_concurrency` ``ModelInfer`` calls read their message at once; up to
  ``--grpc_max_waiting_calls`` more wait for a place (FIFO, each up to ``--request_timeout_s``), past them
  a call gets RESOURCE_EXHAUSTED at once, its message never parsed. A call that has no place has not asked
  for its message, so the gRPC core holds at most the HTTP/2 stream window of it: 64 KiB, because the
  server turns BDP probing off (with it the window grows to 4 MiB or more, which every waiting or
  refused call would fill; docs/request-model.md has the measurements).
- :class:`GrpcAdmissionInterceptor`: the gRPC core already refuses messages over
  ``--grpc_max_receive_message_length`` (RESOURCE_EXHAUSTED); this counts each ``ModelInfer``
  message against the same budget before protobuf parses it, RESOURCE_EXHAUSTED when over (KServe's
  gRPC server gets it through :func:`predictor.serving.kserve_workarounds.admitting_grpc_server`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from predictor.serving import prometheus

log = logging.getLogger(__name__)

#: gRPC methods whose messages are counted (the others are small).
GRPC_COUNTED_METHODS = ("/inference.GRPCInferenceService/ModelInfer",)


class ByteBudget:
    """Bytes of request bodies in flight, bounded by ``limit`` (thread-safe).

    A reservation that would exceed ``limit`` is refused unless nothing else is reserved.
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"the in-flight bytes limit must be positive, got {limit}")
        self.limit = limit
        self._used = 0
        self._admitted = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def activity(self) -> tuple[bool, int]:
        """``(anything in flight, reservations granted so far)``: the heap trimmer's view of the load."""
        with self._lock:
            return self._used > 0, self._admitted

    def try_reserve(self, n: int) -> bool:
        """Reserve ``n`` more bytes; False (nothing reserved) when they do not fit."""
        with self._lock:
            if self._used and self._used + n > self.limit:
                return False
            self._used += n
            self._admitted += 1
            prometheus.INFLIGHT_BYTES.set(self._used)
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self._used -= n
            prometheus.INFLIGHT_BYTES.set(self._used)

    def over_budget_reason(self, n: int) -> str:
        return (
            f"overloaded: {self._used} request bytes in flight, {n} more would pass the limit of "
            f"{self.limit} (--max_inflight_bytes); retry later"
        )


#: Bytes charged per JSON value separator (``,``): the list slot and the int64 array element a value
#: becomes (8 + 8), with room for the list's over-allocation and the uint8 copy.
JSON_VALUE_COST = 24
#: Bytes charged per JSON array opening (``[``): a Python list object (56 bytes empty) and its slot.
JSON_LIST_COST = 64


def json_parse_cost(chunk: bytes | bytearray | memoryview) -> int:
    """What parsing these bytes of a JSON body may cost beyond the bytes themselves: each value
    separator and each array are charged (:data:`JSON_VALUE_COST`, :data:`JSON_LIST_COST`). Strings (an
    image's base64 text) cost about their bytes and contain neither character when base64."""
    data = bytes(chunk)
    return JSON_VALUE_COST * data.count(b",") + JSON_LIST_COST * data.count(b"[")


class CallLimiter:
    """At most ``limit`` calls inside at once; up to ``max_waiting`` more wait their turn (FIFO), each
    for at most ``max_wait_s`` (None: until its own deadline); others are refused at once. Used on the
    event loop only (no locks). ``ssd_grpc_waiting_calls`` is the number waiting."""

    def __init__(self, limit: int, max_waiting: int, max_wait_s: float | None = None) -> None:
        if limit <= 0 or max_waiting < 0:
            raise ValueError(f"limit must be positive and max_waiting >= 0, got {limit}, {max_waiting}")
        self.limit, self.max_waiting, self.max_wait_s = limit, max_waiting, max_wait_s or None
        self.inside = 0
        self._waiters: collections.deque[asyncio.Future[bool]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def enter(self) -> str | None:
        """Take a place (None), or the reason this call is refused: ``max_waiting`` calls wait already,
        or no place came within ``max_wait_s``. A call cancelled while it waits leaves no trace."""
        if self.inside < self.limit:  # a place is free only when nobody waits (leave hands it over)
            self.inside += 1
            return None
        if self.waiting >= self.max_waiting:
            return self.full_reason()
        loop = asyncio.get_running_loop()
        place: asyncio.Future[bool] = loop.create_future()
        timer = None
        if self.max_wait_s is not None:
            timer = loop.call_later(self.max_wait_s, lambda: place.done() or place.set_result(False))
        self._waiters.append(place)
        prometheus.GRPC_WAITING.inc()
        try:
            granted = await place
        except asyncio.CancelledError:
            if place.done() and not place.cancelled() and place.result():
                self.leave()  # handed a place just as the call was cancelled: pass it on
            raise
        finally:
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(ValueError):  # still queued: timed out or cancelled
                self._waiters.remove(place)
            prometheus.GRPC_WAITING.dec()
        return None if granted else self.timeout_reason()

    def leave(self) -> None:
        """Give the place back: to the first call still waiting, else free it."""
        while self._waiters:
            place = self._waiters.popleft()
            if not place.done():
                place.set_result(True)
                return
        assert self.inside > 0, "leave() without enter()"
        self.inside -= 1

    def full_reason(self) -> str:
        return (
            f"overloaded: {self.inside} gRPC calls are reading their messages (at most {self.limit}: "
            f"--max_inflight_bytes / --grpc_max_receive_message_length + 1) and {self.waiting} wait for "
            f"a place (at most {self.max_waiting}: --grpc_max_waiting_calls); retry later"
        )

    def timeout_reason(self) -> str:
        return (
            f"overloaded: no place to read this call's message came within {self.max_wait_s:g} s "
            f"(--request_timeout_s): {self.limit} gRPC calls read theirs at once "
            "(--max_inflight_bytes / --grpc_max_receive_message_length + 1); retry later"
        )

    def time_left(self, arrived: float) -> float | None:
        """Seconds left of ``max_wait_s`` for a call that arrived at ``arrived`` (``time.monotonic()``),
        at least 0; None without a limit."""
        if self.max_wait_s is None:
            return None
        return max(0.0, arrived + self.max_wait_s - time.monotonic())

    def read_timeout_reason(self) -> str:
        return (
            f"the request message did not arrive within {self.max_wait_s:g} s of the call's arrival "
            "(--request_timeout_s); its reading place was given to other calls"
        )


def grpc_concurrency(budget_bytes: int, max_message_bytes: int) -> int:
    """The most gRPC calls served at once: messages of up to ``max_message_bytes`` in memory stay within
    the in-flight budget plus one message (the REST rule: one request is always admitted)."""
    return max(1, budget_bytes // max(1, max_message_bytes)) + 1


# ----------------------------------------------------------------------------- gRPC
#: When the ``ModelInfer`` call being handled arrived (``time.monotonic()``), set by
#: :class:`GrpcAdmissionInterceptor` before the call waits for a place: its time limit
#: (``--request_timeout_s``) counts from then, through the wait, the read and the model. None outside
#: such a call (REST requests).
CALL_ARRIVAL: contextvars.ContextVar[float | None] = contextvars.ContextVar("ssd_call_arrival", default=None)
_STALLED = object()


async def _first(requests: Any) -> Any:
    """The first message of a request stream, or None when it ends without one."""
    async for message in requests:
        return message
    return None


class _Admitted:
    """A deserialized request that holds ``n`` bytes of the budget until released (or collected)."""

    def __init__(self, request: Any, budget: ByteBudget, n: int) -> None:
        self.request = request
        self._finalizer = weakref.finalize(self, budget.release, n)

    def release(self) -> None:
        self._finalizer()


class _Refused:
    def __init__(self, reason: str, code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED) -> None:
        self.reason, self.code = reason, code


class GrpcAdmissionInterceptor(aio.ServerInterceptor):
    """Bounds the ``ModelInfer`` calls that read their message (``limiter``), and counts each message
    against the :class:`ByteBudget` before it is parsed.

    The handler is made request-streaming, so that it runs before the message is read: it takes its
    turn from the :class:`CallLimiter` (or ends with RESOURCE_EXHAUSTED, the message unread), then reads
    the one message and gives its place back. The message's bytes are reserved in its deserializer (the
    gRPC core has received it, protobuf has not parsed it yet) and released when the call ends; over the
    budget the call ends with RESOURCE_EXHAUSTED and the message is never parsed; a message that does not
    parse ends it with INVALID_ARGUMENT.
    """

    def __init__(self, budget: ByteBudget, limiter: CallLimiter | None = None) -> None:
        self.budget = budget
        self.limiter = limiter or CallLimiter(1_000_000, 0)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler_call_details.method not in GRPC_COUNTED_METHODS
            or handler.unary_unary is None
        ):
            return handler
        parse = handler.request_deserializer or (lambda raw: raw)
        behavior = handler.unary_unary
        budget = self.budget

        def deserialize(raw: bytes) -> _Admitted | _Refused:
            n = len(raw)
            if not budget.try_reserve(n):
                prometheus.REJECTED.labels("inflight_bytes").inc()
                prometheus.refused_unread()
                return _Refused(budget.over_budget_reason(n))
            admitted = _Admitted(None, budget, n)
            try:
                admitted.request = parse(raw)
            except Exception as e:  # not a message of this method: the client's fault, not ours
                admitted.release()
                return _Refused(
                    f"the request message cannot be parsed ({type(e).__name__})",
                    grpc.StatusCode.INVALID_ARGUMENT,
                )
            except BaseException:
                admitted.release()
                raise
            return admitted

        async def admitted_behavior(request: _Admitted | _Refused, context: aio.ServicerContext) -> Any:
            if isinstance(request, _Refused):
                await context.abort(request.code, request.reason)
            try:
                return await behavior(request.request, context)
            finally:
                request.release()

        limiter = self.limiter

        async def limited_behavior(requests: Any, context: aio.ServicerContext) -> Any:
            arrived = time.monotonic()
            CALL_ARRIVAL.set(arrived)  # this call's own task: the model's deadline counts from here
            refusal = await limiter.enter()
            if refusal is not None:
                prometheus.REJECTED.labels("grpc_calls").inc()
                prometheus.refused_unread()
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            try:  # a unary call: one message, read only now, within max_wait_s (a stalled client
                # that never sends it would otherwise hold the place for good: calls without a client
                # deadline are never cancelled)
                request = await asyncio.wait_for(_first(requests), limiter.time_left(arrived))
            except TimeoutError:
                request = _STALLED
            finally:
                # The place bounds messages being read; once read, the byte budget holds the message's
                # bytes until the call ends, so a call waiting in the queue or the model holds no place.
                limiter.leave()
            if request is _STALLED:
                prometheus.REJECTED.labels("grpc_read_timeout").inc()
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, limiter.read_timeout_reason())
            if request is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
            return await admitted_behavior(request, context)

        return grpc.stream_unary_rpc_method_handler(
            limited_behavior,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )
