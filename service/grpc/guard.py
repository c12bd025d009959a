"""The gRPC server's guard against hostile clients, and its one error mapping (`status_of`).

grpcio's sync server gives a unary method's call a pool thread as soon as it arrives, and that
thread waits for the message without a limit, so a few calls that never send one used to hold
every thread. Every call is served as request-streaming on the server's side (the wire is the
same), so that the key check (`KeyCheck`), the bounds on open calls and streams and a deadline on
each message the client owes (`Guard`, `Deadlines`, `Wait`) all apply when the call arrives; and
the pool (`Threads`) gives calls kept waiting by held threads threads of their own. How
connections are kept: `CONNECTION_OPTIONS`. The server itself is service/grpc/server.py.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

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
# Threads beyond SERVING_GRPC_MAX_CALLS: they only refuse calls (a key, a bound), at once.
SPARE_THREADS = 4
# Threads: a call that has waited PATIENCE seconds for a thread gets one of its own, when some
# are held by calls that have waited HELD seconds for their message (longer than a loaded
# machine takes to hand over one that came); such a thread ends after LINGER seconds idle.
PATIENCE, HELD, LINGER = 0.02, 0.25, 1.0
# How connections are kept (gRPC core's server options; the age's grace is set in build_server).
CONNECTION_OPTIONS = [
    ("grpc.max_concurrent_streams", 100),  # calls at once on one connection; more wait in the client
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


class Threads(futures.Executor):
    """gRPC's thread pool: `core` threads (SERVING_GRPC_THREADS) take the calls in turn, as a
    fixed pool does, so that under load a thread that ends a call takes the next one at once.
    When calls have waited PATIENCE for a thread while fewer than `core` threads work, the others
    being held by calls that have waited HELD for a message (`held`), each such call gets a
    thread of its own, up to `most` threads in all; such a thread ends after LINGER without a
    call. (A plain pool of `most` threads hands every call to a sleeping thread instead: measured
    about 10 % fewer single-row calls per second; and calls that merely queue under load get no
    more threads, which would only share the same cores.)"""

    def __init__(self, core: int, most: int, held):
        self.core, self.most, self.held = core, most, held
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)  # idle threads wait here for a call
        self.queued = threading.Condition(self.lock)  # the spawner waits here for calls to watch
        self.calls: collections.deque[tuple] = collections.deque()  # (since, future, fn, args, kwargs)
        self.threads = self.idle = 0
        self.watching = False  # whether the spawner waits on `queued`
        threading.Thread(target=self.spawn, name="grpc-spawner", daemon=True).start()

    def submit(self, fn, *args, **kwargs):
        future = futures.Future()
        with self.lock:
            self.calls.append((time.monotonic(), future, fn, args, kwargs))
            if len(self.calls) <= self.idle:  # an idle thread for each call waiting
                self.ready.notify()
                return future
            if self.threads >= self.core:
                if self.watching:
                    self.queued.notify()
                return future
            self.threads += 1
        self.start(core=True)
        return future

    def start(self, core: bool) -> None:
        threading.Thread(target=self.work, args=(core,), name="grpc", daemon=True).start()

    def work(self, core: bool) -> None:
        while True:
            with self.lock:
                while not self.calls:
                    self.idle += 1
                    woken = self.ready.wait(None if core else LINGER)
                    self.idle -= 1
                    if not woken and not self.calls:
                        self.threads -= 1
                        return
                _, future, fn, args, kwargs = self.calls.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as error:
                    future.set_exception(error)
            del future, fn, args, kwargs  # nothing of the call held while idle

    def spawn(self) -> None:
        """A thread for each call that has waited PATIENCE, beyond the idle ones, while threads
        are held."""
        while True:
            with self.lock:
                while not self.calls:
                    self.watching = True
                    self.queued.wait()
                    self.watching = False
            held = self.held(HELD)
            with self.lock:
                now, late = time.monotonic(), 0
                for call in self.calls:  # in the order they came
                    if now - call[0] < PATIENCE:
                        break
                    late += 1
                working = self.threads - self.idle - held
                new = max(0, min(late - self.idle, self.most - self.threads)) if working < self.core else 0
                self.threads += new
                pause = PATIENCE if late or not self.calls else self.calls[0][0] + PATIENCE - now
            for _ in range(new):
                self.start(core=False)
            time.sleep(pause)


class Guard(grpc.ServerInterceptor):
    """What every call passes before its method runs, as soon as it arrives: each handler is
    served as request-streaming (`guarded`), so that nothing waits for a message unbounded.

    - at most `max_calls` calls open at once in the process, of which `max_streams` streaming
      ones (health Watch, reflection: they last); beyond, RESOURCE_EXHAUSTED at once;
    - each message the client owes must come within SERVING_CLIENT_TIMEOUT (Deadlines).
    A call that holds a thread meanwhile does not keep others waiting for long (Threads)."""

    def __init__(self, settings: Settings):
        self.max_calls, self.max_streams = settings.grpc_max_calls, settings.grpc_max_streams
        self.calls = self.streams = 0
        self.lock = threading.Lock()
        self.deadlines = Deadlines(settings.client_timeout)
        self.handlers: dict[str, tuple] = {}  # method: (its handler, guarded), built on first use

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None:
            return None
        known = self.handlers.get(details.method)
        if known is None or known[0] is not handler:
            known = self.handlers[details.method] = handler, self.guarded(handler, details.method)
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
        kind = grpc.stream_stream_rpc_method_handler if handler.response_streaming \
            else grpc.stream_unary_rpc_method_handler
        return kind(serve, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    def admit(self, context, method: str, streaming: bool) -> None:
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
