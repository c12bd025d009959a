"""The gRPC server's guard against hostile clients and overload, and its one error mapping (`status_of`).

grpcio's sync server gives a unary method's call a pool thread as soon as it arrives, and that
thread waits for the message without a limit, so a few calls that never send one used to hold
every thread. Every call is served as request-streaming on the server's side (the wire is the
same), so that the key check (`KeyCheck`), the bounds on open calls and streams and a deadline on
each message the client owes (`Guard`, `Deadlines`, `Wait`) all apply when the call arrives; and
the pool (service/grpc/threads.py) gives calls kept waiting by held threads threads of their own.
Under overload (docs/grpc.md): while calls wait for a thread longer than the queue budget, a call
is refused as it arrives, with a retry hint; a call whose deadline passed while it waited is not
run; the probes never wait. How connections are kept: `CONNECTION_OPTIONS`. The server itself is
service/grpc/server.py.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from service.core import metrics
from service.core.errors import BadRequest, ModelBusy, ServiceError
from service.rest.access import Keys
from service.settings import Settings
from service.stubs import messages

log = logging.getLogger(__name__)

SERVICE = messages.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.CANCELLED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Where the code is not the HTTP status's: a model at its share is a quota spent (gRPC's
# RESOURCE_EXHAUSTED), not a server that is down (UNAVAILABLE, REST's 503).
KINDS = {ModelBusy: grpc.StatusCode.RESOURCE_EXHAUSTED}
# Never kept waiting behind other calls (a thread of their own), never refused for the budget.
PROBES = (f"/{health.SERVICE_NAME}/", f"/{SERVICE}/ServerLive", f"/{SERVICE}/ServerReady")
# When a refused call may try again: REST's Retry-After (whole seconds, as the front door's 503),
# and the trailer gRPC's own retries read when a retry policy names the code (gRFC A6).
RETRY_AFTER_S = 1
RETRY_HINT = (("retry-after", str(RETRY_AFTER_S)), ("grpc-retry-pushback-ms", str(RETRY_AFTER_S * 1000)))
# Threads beyond SERVING_GRPC_MAX_CALLS: they only refuse calls (a key, a bound), at once.
SPARE_THREADS = 4
# How connections are kept (gRPC core's server options; the age's grace is set in build_server).
CONNECTION_OPTIONS = [
    # Calls at once on one connection; more wait in the client. 8 measured a better p99 under a
    # storm (165-350 against 545-690 ms at a 1 s deadline, bench/overload.py), but a client that
    # opens a connection and sends more calls at once than the bound, before the server's
    # settings reach it, has the excess reset: a grpcio channel answered them UNAVAILABLE (seen
    # with 33 calls). The queue budget bounds the wait instead.
    ("grpc.max_concurrent_streams", 100),
    ("grpc.keepalive_time_ms", 60_000),  # while calls are open, a ping every minute ...
    ("grpc.keepalive_timeout_ms", 20_000),  # ... unanswered for 20 s closes the connection
    ("grpc.http2.max_pings_without_data", 0),  # and go on pinging beside a quiet stream
    ("grpc.max_connection_idle_ms", 5 * 60_000),  # closed (GOAWAY) after 5 minutes without a call
    ("grpc.max_connection_age_ms", 30 * 60_000),  # renewed after 30 minutes, which also spreads
]  # long-lived clients again over the processes


class Unauthenticated(ServiceError):
    status = 401


class Stalled(ServiceError):
    status = 408  # the call is already cancelled (Deadlines): this only ends its handler


class Busy(ServiceError):
    status = 429


def status_of(error: Exception, where: str) -> tuple[grpc.StatusCode, str]:
    """Every error's status code and message, in one place: a ServiceError's own, anything else
    INTERNAL with its type only (and logged with its trace)."""
    if isinstance(error, ServiceError):
        return KINDS.get(type(error)) or CODES.get(error.status, grpc.StatusCode.INTERNAL), error.message
    log.error("unhandled error in %s", where, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__})"


class KeyCheck(grpc.ServerInterceptor):
    """The REST API keys over gRPC (README, Access control): `authorization: Bearer <key>` metadata
    on every method but reflection (the protocol's description, like /openapi.json) and, while
    SERVING_PUBLIC_HEALTH holds, the health ones; UNAUTHENTICATED with REST's message otherwise,
    from the call's metadata as it arrives, without waiting for its message."""

    def __init__(self, keys: Keys, public_health: bool):
        self.keys = keys
        self.public = [f"/{reflection.SERVICE_NAME}/"]
        if public_health:
            self.public += [f"/{health.SERVICE_NAME}/", f"/{SERVICE}/ServerLive", f"/{SERVICE}/ServerReady"]

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith(tuple(self.public)):
            return handler
        authorization = next((value for key, value in details.invocation_metadata
                              if key == "authorization"), None)
        refused = self.keys.refusal(authorization)
        if refused is None:
            return handler

        def refuse(requests, context):  # request-streaming: answered without waiting for the message
            context.abort(*status_of(Unauthenticated(refused[1]), details.method))

        kind = grpc.stream_stream_rpc_method_handler if handler.response_streaming \
            else grpc.stream_unary_rpc_method_handler
        return kind(refuse, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)


class Wait:
    """A message a call's client owes: due by `due`; `context` None once it came."""

    __slots__ = ("due", "context", "method", "cut")

    def __init__(self, due: float, context, method: str):
        self.due, self.context, self.method, self.cut = due, context, method, False


class Deadlines:
    """Cancels a call whose client has owed a message for `seconds` (SERVING_CLIENT_TIMEOUT).

    One thread watches every wait: all last the same time, so they fall due in the order they
    began, and a queue kept in that order is enough. No call wakes the thread (that would cost a
    switch of threads per call): on an empty queue it looks again after `seconds`, before any
    wait begun meanwhile falls due. grpcio's sync server has no public way to end a call from
    another thread with a status of its own: `cancel()` is the one it has, and the client sees
    CANCELLED (the server logs why)."""

    def __init__(self, seconds: int):
        self.seconds = seconds
        self.waits: collections.deque[Wait] = collections.deque()
        self.lock = threading.Lock()
        threading.Thread(target=self.watch, name="grpc-deadlines", daemon=True).start()

    def receive(self, requests, context, method: str):
        """The client's next message; StopIteration once it has sent them all; Stalled when none
        came in time (the call is then cancelled)."""
        wait = Wait(time.monotonic() + self.seconds, context, method)
        with self.lock:
            while self.waits and self.waits[0].context is None:  # answered, not yet dropped
                self.waits.popleft()
            self.waits.append(wait)
        try:
            message = next(requests)
        except (StopIteration, grpc.RpcError):
            if self.end(wait):
                raise Stalled(f"no message within {self.seconds} s") from None
            raise
        if self.end(wait):
            raise Stalled(f"no message within {self.seconds} s")
        return message

    def waiting(self, seconds: float) -> int:
        """How many calls have waited `seconds` or more for a message."""
        due_by = time.monotonic() - seconds + self.seconds  # those that began `seconds` ago
        count = 0
        with self.lock:
            for wait in self.waits:  # in the order they began
                if wait.due > due_by:
                    break
                count += wait.context is not None
        return count

    def end(self, wait: Wait) -> bool:
        """Ends a wait; whether it had been cut."""
        with self.lock:
            wait.context = None
            return wait.cut

    def watch(self) -> None:
        while True:
            late, pause = None, self.seconds
            with self.lock:
                while self.waits and self.waits[0].context is None:
                    self.waits.popleft()
                if self.waits:
                    pause = self.waits[0].due - time.monotonic()
                    if pause <= 0:
                        late = self.waits.popleft()
                        late.cut = True
                        context = late.context
            if late is None:
                time.sleep(pause)
                continue
            context.cancel()
            log.info("cancelled a call to %s from %s: it sent no message within %s s "
                     "(SERVING_CLIENT_TIMEOUT)", late.method, context.peer(), self.seconds)


class Guard(grpc.ServerInterceptor):
    """What every call passes before its method runs, as soon as it arrives: each handler is
    served as request-streaming (`guarded`), so that nothing waits for a message unbounded.

    - at most `max_calls` calls open at once in the process, of which `max_streams` streaming
      ones (health Watch, reflection: they last); beyond, RESOURCE_EXHAUSTED at once;
    - while a call has waited for a thread longer than `budget`, RESOURCE_EXHAUSTED with a retry
      hint, sent as the call arrives (`refusal`); the probes (PROBES) are never refused for it,
      and have a thread of their own;
    - a call whose deadline passed while it waited is not run: DEADLINE_EXCEEDED;
    - each message the client owes must come within SERVING_CLIENT_TIMEOUT (Deadlines).
    A call that holds a thread meanwhile does not keep others waiting for long (Threads)."""

    def __init__(self, settings: Settings):
        self.max_calls, self.max_streams = settings.grpc_max_calls, settings.grpc_max_streams
        self.budget = settings.grpc_queue_budget_ms / 1000
        self.waited: Callable[[], float] = lambda: 0.0  # the longest wait for a thread: Threads.waited
        self.calls = self.streams = 0
        self.lock = threading.Lock()
        self.deadlines = Deadlines(settings.client_timeout)
        # method: (its handler, guarded, refusal), built on first use
        self.handlers: dict[str, tuple] = {}

    def intercept_service(self, continuation, details):
        """In grpcio's poller, as the call arrives: while a call has waited for a thread longer
        than SERVING_GRPC_QUEUE_BUDGET_MS, the refusal (answered there and then), else the guarded
        handler."""
        handler = continuation(details)
        if handler is None:
            return None
        known = self.handlers.get(details.method)
        if known is None or known[0] is not handler:
            known = self.handlers[details.method] = (handler, self.guarded(handler, details.method),
                                                     self.refusal(handler, details.method))
        if known[2] is not None and self.budget and self.waited() > self.budget:
            return known[2]
        return known[1]

    def guarded(self, handler, method: str):
        if handler.request_streaming:
            behavior = handler.stream_stream or handler.stream_unary

            def serve(requests, context, *send):
                self.admit_stream(context, method)
                return behavior(self.each(requests, context, method), context, *send)
        elif handler.response_streaming:
            behavior = handler.unary_stream

            def serve(requests, context, *send):
                self.admit_stream(context, method)
                return behavior(self.first(requests, context, method), context, *send)
        else:
            behavior = handler.unary_unary

            def serve(requests, context):
                self.admit(context, method, streaming=False)
                try:
                    return behavior(self.first(requests, context, method), context)
                finally:
                    self.leave(streaming=False)
        # A non-blocking stream (health Watch) keeps answering without holding a thread.
        serve.experimental_non_blocking = getattr(behavior, "experimental_non_blocking", False)
        if method.startswith(PROBES):
            serve.turn = "probe"
        return self.handler_like(handler, serve)

    def refusal(self, handler, method: str):
        """What a call gets while calls wait for a thread longer than the budget: RESOURCE_EXHAUSTED
        and when to try again, sent from grpcio's poller without reading its message (None for the
        probes, which never wait). It costs the process about a fifth of an answer's CPU (80 against
        360-450 µs, docs/grpc.md)."""
        if method.startswith(PROBES):
            return None
        message = (f"the server is busy: calls wait for a thread longer than "
                   f"{self.budget * 1000:.0f} ms (SERVING_GRPC_QUEUE_BUDGET_MS); "
                   f"try again in {RETRY_AFTER_S} s")

        def refuse(requests, context, *send):
            metrics.SHED_REQUESTS.labels("grpc").inc()
            context.set_trailing_metadata(RETRY_HINT)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

        refuse.turn = "now"
        return self.handler_like(handler, refuse)

    @staticmethod
    def handler_like(handler, behavior):
        """A request-streaming handler (server side) for `behavior`, with `handler`'s codecs."""
        kind = grpc.stream_stream_rpc_method_handler if handler.response_streaming \
            else grpc.stream_unary_rpc_method_handler
        return kind(behavior, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    def admit(self, context, method: str, streaming: bool) -> None:
        """Counted in, or refused; a call whose deadline passed while it waited for its thread is
        not run (its client has stopped waiting: it saw DEADLINE_EXCEEDED already)."""
        if context.time_remaining() <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed before it ran")
        with self.lock:
            if self.calls >= self.max_calls:
                refusal = f"the server is at its limit of {self.max_calls} calls at once; try again later"
            elif streaming and self.streams >= self.max_streams:
                refusal = (f"the server is at its limit of {self.max_streams} streaming calls at once "
                           "(health Watch, reflection); try again later")
            else:
                self.calls += 1
                self.streams += streaming
                return
        context.abort(*status_of(Busy(refusal), method))

    def admit_stream(self, context, method: str) -> None:
        """A stream is counted until it ends, which may be long after its handler returned."""
        self.admit(context, method, streaming=True)
        if not context.add_callback(lambda: self.leave(streaming=True)):  # it ended already
            self.leave(streaming=True)

    def leave(self, streaming: bool) -> None:
        with self.lock:
            self.calls -= 1
            self.streams -= streaming

    def first(self, requests, context, method: str):
        """The one message of a unary request."""
        try:
            return self.deadlines.receive(requests, context, method)
        except StopIteration:
            error = BadRequest(f"{method} takes one request message; the call ended without it")
        except ServiceError as stalled:
            error = stalled
        context.abort(*status_of(error, method))

    def each(self, requests, context, method: str):
        """A stream's messages, each due within the deadline."""
        while True:
            try:
                yield self.deadlines.receive(requests, context, method)
            except StopIteration:
                return
            except ServiceError as error:
                context.abort(*status_of(error, method))
