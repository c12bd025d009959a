"""The Open Inference Protocol over gRPC: one server process, over the same data plane as REST.

`python -m service` (service/process/launcher.py) starts SERVING_WORKERS of these processes, each a fresh
interpreter (`python -m service.grpc.server`), all bound to SERVING_GRPC_BIND with SO_REUSEPORT so
that the kernel spreads connections among them. gRPC's core runs threads of its own, and a
process that forks after a gRPC server exists inherits a broken copy of them: so nothing here
forks, and the launcher never imports grpc (it only spawns and watches).

Each process loads the model repository itself and polls it (service/repository/polling.py; the readiness
rule is ModelRegistry.ready, as for REST), serves the protocol's service, the standard health
service (grpc.health.v1: SERVING when ready, NOT_SERVING otherwise and during shutdown, updated
after each poll that changed something) and server reflection. Every method is an adapter over the
data plane (service/core/dataplane.py): decode, call, encode; its call is reported to the data
plane when it ends, so that the metrics hook counts it in the shared Prometheus folder with
protocol="grpc" and the status code's name.

Errors are mapped once (`status_of`, used by `rpc` and by the checks before a method runs): a
ServiceError's HTTP status gives the code, with REST's message; anything else is INTERNAL with
the exception's type only, and is logged. The message size limit is REST's body limit
(SERVING_MAX_BODY_BYTES; gRPC answers RESOURCE_EXHAUSTED above it), the batch limit the data
plane's. SIGTERM stops gracefully (new calls refused, calls in flight given
SERVING_GRACEFUL_TIMEOUT seconds); SIGHUP is ignored: the launcher reloads by replacing processes.

Hostile clients and overload: the guard (service/grpc/guard.py: `Guard`, `KeyCheck`,
`CONNECTION_OPTIONS`) serves every call as request-streaming on the server's side, so that the
key check, the bounds on open calls and streams, the queue budget and a deadline on each message
the client owes all apply when the call arrives; the pool (service/grpc/threads.py) gives calls
kept waiting by held threads threads of their own, and the probes a thread of their own.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service.core.dataplane import DataPlane
from service.core.errors import ModelNotReady
from service.core.types import Call
from service.grpc import codec
from service.grpc.guard import (
    CONNECTION_OPTIONS,
    SERVICE,
    SPARE_THREADS,
    Guard,
    KeyCheck,
    status_of,
)
from service.grpc.threads import Threads
from service.repository import polling
from service.rest.access import Keys
from service.settings import Settings
from service.stubs import messages, services

log = logging.getLogger(__name__)

def rpc(inference: bool = False):
    """A method's errors answered by `status_of`; its call to the data plane reported when it ends
    (counted when it asked for a model: the request metrics, and the statistics for inference)."""

    def wrap(method):
        @functools.wraps(method)
        def handler(self, request, context):
            call = Call("grpc", inference=inference)
            code = grpc.StatusCode.OK
            try:
                return method(self, request, context, call)
            except Exception as error:
                code, message = status_of(error, method.__name__)
                if getattr(error, "headers", ()):  # REST's Retry-After, as trailing metadata
                    context.set_trailing_metadata(tuple((name.lower(), value)
                                                        for name, value in error.headers))
            finally:
                self.plane.finish(call, code.name, code == grpc.StatusCode.OK)
            context.abort(code, message)

        return handler

    return wrap


class InferenceServicer(services.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane):
        self.plane = plane

    @rpc()
    def ServerLive(self, request, context, call):
        return messages.ServerLiveResponse(live=self.plane.live())

    @rpc()
    def ServerReady(self, request, context, call):
        return messages.ServerReadyResponse(ready=self.plane.readiness().ready)

    @rpc()
    def ServerMetadata(self, request, context, call):
        return messages.ServerMetadataResponse(**self.plane.server_metadata("grpc"))

    @rpc()
    def ModelReady(self, request, context, call):
        """ready=false for a version that failed to load; NOT_FOUND for an unknown one (as REST).
        A served version whose files changed and were refused says so in the trailing metadata
        `reason` (REST's ready answer has it in its body)."""
        try:
            stale = self.plane.model_ready(request.name, request.version or None, call)
        except ModelNotReady:
            return messages.ModelReadyResponse(ready=False)
        if stale:
            context.set_trailing_metadata((("reason", stale.encode("ascii", "backslashreplace").decode()),))
        return messages.ModelReadyResponse(ready=True)

    @rpc()
    def ModelMetadata(self, request, context, call):
        return codec.encode_metadata(*self.plane.model_metadata(request.name, request.version or None, call))

    @rpc(inference=True)
    def ModelInfer(self, request, context, call):
        remaining = context.time_remaining()  # None without a deadline
        if remaining is not None:
            call.deadline = call.started + remaining
        model = self.plane.model(request.model_name, request.model_version or None, call)
        inference = codec.decode_request(request)
        response = self.plane.infer(model, inference, call)
        return codec.encode_response(response, codec.raw_outputs(request, response))


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


def report_health(checker: health.HealthServicer, plane: DataPlane) -> None:
    status = (health_pb2.HealthCheckResponse.SERVING if plane.readiness().ready
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
    guard.waited = threads.waited  # past SERVING_GRPC_QUEUE_BUDGET_MS, calls are refused
    server = grpc.server(threads, options=options, interceptors=interceptors)
    services.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), server)
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    report_health(checker, plane)
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
    plane = DataPlane(polling.registry(settings), settings)
    plane.refresh()
    server, checker = build_server(plane, settings)
    polling.start(plane, settings.poll_interval, functools.partial(report_health, checker))
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
