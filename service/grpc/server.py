"""The Open Inference Protocol over gRPC: one server process, over the same data plane as REST.

`python -m service` (service/process/launcher.py) starts SERVING_WORKERS of these processes, each a fresh
interpreter (`python -m service.grpc.server`), all bound to SERVING_GRPC_BIND with SO_REUSEPORT so
that the kernel spreads connections among them. gRPC's core runs threads of its own, and a
process that forks after a gRPC server exists inherits a broken copy of them: so nothing here
forks, and the launcher never imports grpc (it only spawns and watches).

Each process loads the model repository itself and polls it (service/repository/polling.py; the readiness
rule is ModelRegistry.ready, as for REST), serves the protocol's service, the standard health
service (grpc.health.v1: SERVING when ready, NOT_SERVING otherwise and during shutdown, updated
after each poll that changed something) and server reflection, and counts its calls in the shared
Prometheus folder with protocol="grpc" and the status code's name.

Errors are mapped once (`status_of`, used by `rpc` and by the checks before a method runs): a
ServiceError's HTTP status gives the code, with REST's message; anything else is INTERNAL with
the exception's type only, and is logged. The message size limit is REST's body limit
(SERVING_MAX_BODY_BYTES; gRPC answers RESOURCE_EXHAUSTED above it), the batch limit the data
plane's. SIGTERM stops gracefully (new calls refused, calls in flight given
SERVING_GRACEFUL_TIMEOUT seconds); SIGHUP is ignored: the launcher reloads by replacing processes.

Hostile clients (`Guard`, `KeyCheck`, `Threads`, `CONNECTION_OPTIONS`): grpcio's sync server
gives a unary method's call a pool thread as soon as it arrives, and that thread waits for the
message without a limit, so a few calls that never send one used to hold every thread. Here
every call is served as request-streaming on the server's side (the wire is the same), so that
the key check, the bounds on open calls and streams, and a deadline on each message the client
owes all apply when the call arrives; and the pool gives calls kept waiting by held threads
threads of their own.
"""

from __future__ import annotations

import argparse
import collections
import functools
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service import __version__
from service.core import metrics
from service.core.dataplane import DataPlane
from service.core.errors import BadRequest, ModelNotReady, ServiceError
from service.grpc import codec
from service.repository import polling
from service.repository.registry import ModelRegistry
from service.rest.access import Keys
from service.settings import Settings
from service.stubs import messages, services

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
}
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
        return CODES.get(error.status, grpc.StatusCode.INTERNAL), error.message
    log.error("unhandled error in %s", where, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__})"


def rpc(counted: bool, inference: bool = False):
    """A method's errors answered by `status_of`; model calls counted in the metrics, inference
    calls in the statistics too."""

    def wrap(method):
        @functools.wraps(method)
        def handler(self, request, context):
            started = time.perf_counter()
            labels = ["", ""]  # model and version, once resolved (as REST's resolve())
            code = grpc.StatusCode.OK
            try:
                return method(self, request, context, labels)
            except Exception as error:
                code, message = status_of(error, method.__name__)
            finally:
                if counted:
                    seconds = time.perf_counter() - started
                    metrics.observe_request(*labels, "grpc", code.name, seconds)
                    if inference and labels[0]:
                        metrics.observe_inference_request(*labels, code == grpc.StatusCode.OK, seconds)
            context.abort(code, message)

        return handler

    return wrap


class InferenceServicer(services.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane):
        self.plane = plane

    def resolve(self, name: str, version: str, labels: list):
        model = self.plane.model(name, version or None)
        labels[:] = model.name, str(model.version)
        return model

    @rpc(counted=False)
    def ServerLive(self, request, context, labels):
        return messages.ServerLiveResponse(live=True)

    @rpc(counted=False)
    def ServerReady(self, request, context, labels):
        return messages.ServerReadyResponse(ready=self.plane.registry.ready)

    @rpc(counted=False)
    def ServerMetadata(self, request, context, labels):
        # What this protocol carries: statistics and the repository index are REST routes.
        return messages.ServerMetadataResponse(name="onnx-serving", version=__version__,
                                               extensions=["classification"])

    @rpc(counted=True)
    def ModelReady(self, request, context, labels):
        """ready=false for a version that failed to load; NOT_FOUND for an unknown one (as REST).
        A served version whose files changed and were refused says so in the trailing metadata
        `reason` (REST's ready answer has it in its body)."""
        try:
            model = self.resolve(request.name, request.version, labels)
        except ModelNotReady:
            return messages.ModelReadyResponse(ready=False)
        stale = self.plane.registry.stale(model)
        if stale:
            reason = f"its files changed and were refused, the copy loaded before serves: {stale}"
            context.set_trailing_metadata((("reason", reason.encode("ascii", "backslashreplace").decode()),))
        return messages.ModelReadyResponse(ready=True)

    @rpc(counted=True)
    def ModelMetadata(self, request, context, labels):
        model = self.resolve(request.name, request.version, labels)
        return codec.encode_metadata(model, sorted(self.plane.registry.models.get(model.name, {})))

    @rpc(counted=True, inference=True)
    def ModelInfer(self, request, context, labels):
        model = self.resolve(request.model_name, request.model_version, labels)
        inference = codec.decode_request(request)
        response = self.plane.infer(model, inference)
        return codec.encode_response(response, codec.raw_outputs(request, response))


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


def reflection_pool():
    """The stubs' private descriptor pool (service/stubs), with the health and reflection
    services' files added, so that reflection describes all three services."""
    pool = messages.POOL
    for module in (health_pb2, reflection_pb2):
        try:
            pool.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


def report_health(checker: health.HealthServicer, registry: ModelRegistry) -> None:
    status = (health_pb2.HealthCheckResponse.SERVING if registry.ready
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in ("", SERVICE):
        checker.set(name, status)


def build_server(plane: DataPlane, settings: Settings) -> tuple[grpc.Server, health.HealthServicer]:
    options = [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),
        *CONNECTION_OPTIONS,
        # calls in flight on a connection past its age get as long as on SIGTERM to finish
        ("grpc.max_connection_age_grace_ms", settings.graceful_timeout * 1000),
    ]
    keys = Keys.load(settings)
    guard = Guard(settings)
    # The key check first: a refused call is answered before it counts against any bound.
    interceptors = [KeyCheck(keys, settings.public_health), guard] if keys else [guard]
    # Up to a thread for every call the Guard lets in (one waiting for its message holds one).
    threads = Threads(settings.grpc_threads, settings.grpc_max_calls + SPARE_THREADS,
                      held=guard.deadlines.waiting)
    server = grpc.server(threads, options=options, interceptors=interceptors)
    services.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), server)
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    report_health(checker, plane.registry)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                        server, pool=reflection_pool())
    return server, checker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.grpc.server", description=__doc__.split("\n")[0])
    parser.add_argument("--ready-fd", type=int, help="write one byte to this file descriptor once serving")
    args = parser.parse_args(argv)
    try:
        settings = Settings.load()
        Keys.load(settings)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s[grpc %(process)d]: %(message)s")
    registry = polling.load(settings)
    server, checker = build_server(DataPlane(registry, settings), settings)
    polling.start(registry, settings.poll_interval, functools.partial(report_health, checker))
    try:
        port = server.add_insecure_port(settings.grpc_bind)
    except RuntimeError:
        port = 0
    if not port:
        print(f"error: gRPC cannot listen on {settings.grpc_bind}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server.start()
    log.info("gRPC serving on %s", settings.grpc_bind)
    if args.ready_fd is not None:
        os.write(args.ready_fd, b"r")
        os.close(args.ready_fd)
    while not stop.wait(1):
        pass
    checker.enter_graceful_shutdown()
    server.stop(settings.graceful_timeout).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
