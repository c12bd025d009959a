"""gRPC under hostile clients: calls whose message never comes, idle streams, names that are too long.

Each test runs the real service (`python -m service`, tests.conftest.front_door) with one gRPC
process, so that every hostile call and every ordinary one reach the same process. A stalled
call is a request-streaming call on the client side whose request iterator never yields: the
server sees the call's headers, and never its message (the wire is the same for a unary method).
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.core.errors import ModelNotFound
from service.stubs import messages, services
from tests.conftest import MODELS, PARITY, front_door
from tests.test_grpc import answer_arrays, raw_request

INFER = "/inference.GRPCInferenceService/ModelInfer"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
KEY = "hostile-test-key-0123456789"
# The small limits of the `limited` service.
TIMEOUT, MAX_CALLS, MAX_STREAMS = 3, 8, 2
SHORT = 40  # characters of a client's name that an error message may quote


def separate_channel(address: str) -> grpc.Channel:
    """A channel with a connection of its own (by default, channels to one address share one)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


class Stalled:
    """Calls whose request message never comes: each holds a request iterator that blocks until
    the test ends, and then ends without yielding."""

    def __init__(self):
        self.release = threading.Event()

    def requests(self):
        self.release.wait()
        yield from ()

    def model_infer(self, channel: grpc.Channel, metadata=(), timeout: float = 60) -> grpc.Future:
        call = channel.stream_unary(INFER, request_serializer=messages.ModelInferRequest.SerializeToString,
                                    response_deserializer=messages.ModelInferResponse.FromString)
        return call.future(self.requests(), metadata=metadata, timeout=timeout)

    def reflection(self, channel: grpc.Channel, timeout: float = 60):
        return channel.stream_stream(REFLECTION)(self.requests(), timeout=timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release.set()


def failure(call) -> grpc.StatusCode | None:
    """The status code of a finished call that failed, else None."""
    return call.code() if call.done() and call.code() != grpc.StatusCode.OK else None


def one_row_calls(cases, count: int):
    """`count` single-row raw FP32 requests over every model, each with the oracle's answer."""
    names = sorted(cases)
    for number in range(count):
        case = cases[names[number % len(names)]]
        row = number // len(names) % len(case.x)
        request = raw_request(messages, names[number % len(names)],
                              {case.input_name: case.x[row:row + 1].astype(np.float32)})
        yield request, case.output_name, case.expected[row:row + 1]


def ordinary_infer(address: str, cases, count: int, timeout: float = 5, metadata=()) -> list[float]:
    """`count` ModelInfer calls, one after another on a channel of their own, each checked
    against the NumPy forward propagation; their latencies in seconds."""
    latencies = []
    with separate_channel(address) as channel:
        stub = services.GRPCInferenceServiceStub(channel)
        for request, output, expected in one_row_calls(cases, count):
            started = time.perf_counter()
            answer = stub.ModelInfer(request, timeout=timeout, metadata=metadata)
            latencies.append(time.perf_counter() - started)
            got = answer_arrays(answer)[output]
            assert got.shape == expected.shape and np.max(np.abs(got - expected)) <= PARITY
    return latencies


# --- the acceptance test: the default settings ----------------------------------------------------

@pytest.fixture(scope="module")
def served():
    with front_door(MODELS, workers=1) as running:
        yield running


def test_stalled_calls_and_idle_streams_do_not_starve_model_infer(served, cases):
    """200 calls that never send their message (8 on each of 25 connections) and 32 reflection
    streams that never send a request, then 200 ordinary ModelInfer calls: all answered right, p99
    at most 100 ms, and health answers, while the hostile calls are still open (they are ended
    only after SERVING_CLIENT_TIMEOUT, 10 s by default)."""
    ordinary_infer(served.grpc, cases, 6)  # warm: models, channel
    channels = [separate_channel(served.grpc) for _ in range(29)]
    try:
        with Stalled() as stalled:
            started = time.monotonic()
            calls = [stalled.model_infer(channels[n % 25]) for n in range(200)]
            streams = [stalled.reflection(channels[25 + n % 4]) for n in range(32)]
            time.sleep(1)  # every call and stream reaches the server
            latencies = ordinary_infer(served.grpc, cases, 200)
            with separate_channel(served.grpc) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            open_for = time.monotonic() - started
            still_open = sum(not call.done() for call in calls)
            refused_streams = [failure(stream) for stream in streams if stream.done()]
        p99 = float(np.percentile(latencies, 99))
        assert p99 <= 0.100, f"p99 {p99 * 1000:.1f} ms; slowest {max(latencies) * 1000:.1f} ms"
        assert still_open == 200, f"{200 - still_open} stalled calls ended within {open_for:.1f} s"
        # Beyond the cap on streaming calls (SERVING_GRPC_MAX_STREAMS), streams are refused at once.
        assert set(refused_streams) <= {grpc.StatusCode.RESOURCE_EXHAUSTED}, refused_streams
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for channel in channels:
            channel.close()
    assert ordinary_infer(served.grpc, cases, 3)  # and the service answers after they are gone


# --- small limits: the receive deadline, the bounds, the key check --------------------------------

@pytest.fixture(scope="module")
def limited():
    limits = {"SERVING_CLIENT_TIMEOUT": str(TIMEOUT), "SERVING_GRPC_MAX_CALLS": str(MAX_CALLS),
              "SERVING_GRPC_MAX_STREAMS": str(MAX_STREAMS)}
    with front_door(MODELS, workers=1, SERVING_API_KEYS=KEY, **limits) as running:
        yield running


AUTHORIZED = (("authorization", f"Bearer {KEY}"),)


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_stalled_call_is_ended_after_the_client_timeout(limited):
    with separate_channel(limited.grpc) as channel, Stalled() as stalled:
        started = time.monotonic()
        call = stalled.model_infer(channel, AUTHORIZED, timeout=TIMEOUT + 10)
        assert wait_until(call.done, TIMEOUT + 10)
        ended = time.monotonic() - started
    assert call.code() == grpc.StatusCode.CANCELLED, (call.code(), call.details())
    assert TIMEOUT - 0.5 <= ended <= TIMEOUT + 2, ended
    assert "sent no message within 3 s" in limited.log_text()


def test_a_refused_key_is_answered_at_once_without_the_message(limited, cases):
    """Many more refused calls than the process takes at once, none of them sending its message:
    each is answered UNAUTHENTICATED at once, and none holds the process."""
    with separate_channel(limited.grpc) as channel, Stalled() as stalled:
        started = time.monotonic()
        calls = [stalled.model_infer(channel, (("authorization", "Bearer not-the-key-0123456789"),),
                                     timeout=TIMEOUT + 10) for _ in range(4 * MAX_CALLS)]
        calls.append(stalled.model_infer(channel, timeout=TIMEOUT + 10))  # no key at all
        assert wait_until(lambda: all(call.done() for call in calls), TIMEOUT - 1)
        answered = time.monotonic() - started
        codes = {call.code() for call in calls}
        assert codes == {grpc.StatusCode.UNAUTHENTICATED}, (codes, calls[0].details())
        assert ordinary_infer(limited.grpc, cases, 3, metadata=AUTHORIZED)
    assert answered < TIMEOUT - 1


def test_calls_beyond_the_bounds_are_refused_with_resource_exhausted(limited, cases):
    """At most SERVING_GRPC_MAX_CALLS calls at once, and of them SERVING_GRPC_MAX_STREAMS streaming
    ones; freed again once the stalled calls are ended."""
    with separate_channel(limited.grpc) as channel, Stalled() as stalled:
        streams = [stalled.reflection(channel) for _ in range(MAX_STREAMS + 1)]
        assert wait_until(lambda: sum(stream.done() for stream in streams) == 1, TIMEOUT - 1)
        refused = next(stream for stream in streams if stream.done())
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"limit of {MAX_STREAMS} streaming calls" in refused.details()
        assert ordinary_infer(limited.grpc, cases, 3, metadata=AUTHORIZED)  # streams take no turn

        calls = [stalled.model_infer(channel, AUTHORIZED) for _ in range(MAX_CALLS - MAX_STREAMS)]
        with separate_channel(limited.grpc) as other:
            stub = services.GRPCInferenceServiceStub(other)
            refusals = []

            def refused() -> bool:  # answered until every stalled call has reached the server
                try:
                    stub.ServerLive(messages.ServerLiveRequest(), metadata=AUTHORIZED, timeout=TIMEOUT)
                except grpc.RpcError as error:
                    refusals.append(error)
                return bool(refusals)

            assert wait_until(refused, TIMEOUT - 1)
            assert refusals[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refusals[0].details()
            assert f"limit of {MAX_CALLS} calls at once" in refusals[0].details()
            assert not any(call.done() for call in calls)
            # The receive deadline ends the stalled calls and the streams, which frees the bounds.
            assert wait_until(lambda: all(c.done() for c in calls + streams), TIMEOUT + 5)
            assert stub.ServerLive(messages.ServerLiveRequest(), metadata=AUTHORIZED, timeout=TIMEOUT).live
    assert ordinary_infer(limited.grpc, cases, 3, metadata=AUTHORIZED)


def test_a_long_model_name_is_quoted_short(limited):
    name = "n" * 10_000
    with separate_channel(limited.grpc) as channel:
        stub = services.GRPCInferenceServiceStub(channel)
        calls = [
            (stub.ModelInfer, raw_request(messages, name, {"features": np.zeros((1, 4), np.float32)})),
            (stub.ModelMetadata, messages.ModelMetadataRequest(name=name)),
            (stub.ModelReady, messages.ModelReadyRequest(name=name)),
            (stub.ModelMetadata, messages.ModelMetadataRequest(name="demand", version=name)),
        ]
        for method, request in calls:
            with pytest.raises(grpc.RpcError) as error:
                method(request, metadata=AUTHORIZED, timeout=10)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
            details = error.value.details()
            assert "n" * (SHORT + 1) not in details and "n" * 30 in details, details[:200]
            assert len(details) < 200, details[:200]


# --- the thread pool's rule, without a server ---------------------------------------------------

@pytest.mark.parametrize("held", [0, 1], ids=["busy", "held"])
def test_a_call_gets_a_thread_of_its_own_only_while_one_is_held(held):
    """One core thread, busy for a second: a quick call waits for it when the thread works (more
    threads would share the same cores), and gets a thread of its own when the thread is held by
    a call waiting for its message."""
    from service.grpc.threads import PATIENCE, Threads

    threads = Threads(core=1, most=3, held=lambda seconds: held)
    release = threading.Event()
    threads.submit(release.wait, 1)
    started = time.monotonic()
    quick = threads.submit(time.monotonic)
    answered = quick.result(timeout=5) - started
    release.set()
    if held:
        assert answered < 20 * PATIENCE, answered
    else:
        assert answered >= 0.9, answered
    assert threads.threads == 1 + held


def test_model_not_found_quotes_a_short_prefix_of_the_name_and_version():
    message = ModelNotFound("m" * 10_000, "v" * 10_000).message
    assert "m" * (SHORT + 1) not in message and "v" * (SHORT + 1) not in message, message[:200]
    assert "10000 characters" in message and len(message) < 200
    assert ModelNotFound("demand", 7).message == "model 'demand' version 7 not found"
