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

Hostile clients: the guard (service/grpc/guard.py: `Guard`, `KeyCheck`, `Threads`,
`CONNECTION_OPTIONS`) serves every call as request-streaming on the server's side, so that the
key check, the bounds on open calls and streams, and a deadline on each message the client owes
all apply when the call arrives, and gives calls kept waiting by held threads threads of their own.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service import __version__
from service.core import metrics
from service.core.dataplane import DataPlane
from service.core.errors import ModelNotReady
from service.grpc import codec
from service.grpc.guard import (
    CONNECTION_OPTIONS,
    SERVICE,
    SPARE_THREADS,
    Guard,
    KeyCheck,
    Threads,
    status_of,
)
from service.repository import polling
from service.repository.registry import ModelRegistry
from service.rest.access import Keys
from service.settings import Settings
from service.stubs import messages, services

log = logging.getLogger(__name__)

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
