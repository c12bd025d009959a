"""gRPC under overload (service/grpc/guard.py, service/grpc/threads.py): past the queue budget a
call is refused at once with a retry hint and never runs; a call whose deadline passed while it
waited is not run; the probes answer while every thread is busy.

Each test builds the real server (service.grpc.server.build_server) over a data plane with one
thread (SERVING_GRPC_THREADS=1) and a hook that holds that thread in `before_run` until released,
so that what waits, and what the data plane heard run, is known exactly.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from service.core.dataplane import DataPlane
from service.core.hooks import Hook
from service.grpc.server import build_server
from service.repository.registry import ModelRegistry
from service.settings import Settings
from service.stubs import messages, services
from tests.conftest import MODELS
from tests.test_hooks import digits_oracle

BUDGET_MS = 50
ROWS = np.random.default_rng(11).uniform(0, 16, (2, 64))


class Holding(Hook):
    """Holds each run in `before_run` while `hold` is set; records the rows of every run begun."""

    def __init__(self):
        self.hold = threading.Event()
        self.release = threading.Event()
        self.began = threading.Event()
        self.runs = []

    def before_run(self, inference):
        self.runs.append(inference.rows)
        self.began.set()
        if self.hold.is_set():
            self.release.wait(30)


def digits_request(rows: np.ndarray = ROWS) -> messages.ModelInferRequest:
    tensor = messages.ModelInferRequest.InferInputTensor(name="pixels", datatype="FP32",
                                                         shape=list(rows.shape))
    request = messages.ModelInferRequest(model_name="digits", inputs=[tensor])
    request.raw_input_contents.append(rows.astype(np.float32).tobytes())
    return request


def answered_right(answer, rows: np.ndarray = ROWS) -> bool:
    values = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(len(rows), -1)
    return bool(np.allclose(values, digits_oracle(rows), atol=1e-5))


@pytest.fixture
def served():
    """A server with one thread and a 50 ms queue budget, its holding hook, and a stub."""
    plane = DataPlane(ModelRegistry(MODELS).load(), Settings())
    holding = Holding()
    plane.add_hook(holding)
    settings = dataclasses.replace(plane.settings, grpc_threads=1, grpc_queue_budget_ms=BUDGET_MS)
    server, _ = build_server(plane, settings)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = services.GRPCInferenceServiceStub(channel)
    assert answered_right(stub.ModelInfer(digits_request(), timeout=10))  # loaded, warm
    holding.runs.clear()
    try:
        yield stub, channel, holding
    finally:
        holding.release.set()
        channel.close()
        server.stop(0)


def hold_the_thread(stub, holding: Holding, waiting: int = 0, timeout: float = 30) -> list:
    """One call that holds the only thread in its run, and `waiting` more queued behind it."""
    holding.hold.set()
    calls = [stub.ModelInfer.future(digits_request(), timeout=timeout)]
    assert holding.began.wait(10)
    calls += [stub.ModelInfer.future(digits_request(), timeout=timeout) for _ in range(waiting)]
    return calls


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"protocol": "grpc"}) or 0.0


def test_past_the_budget_calls_are_refused_at_once_with_a_retry_hint_and_never_run(served):
    stub, _, holding = served
    shed, waited = sample("serving_shed_requests_total"), sample("serving_queue_wait_seconds_sum")
    queued = hold_the_thread(stub, holding, waiting=3)
    time.sleep(3 * BUDGET_MS / 1000)  # the queued calls have waited past the budget
    refusals, started = [], time.perf_counter()
    cpu = time.process_time()
    for _ in range(200):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(digits_request(), timeout=10)
        refusals.append(refused.value)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert {error.code() for error in refusals} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert "SERVING_GRPC_QUEUE_BUDGET_MS" in refusals[0].details()
    hints = dict(refusals[0].trailing_metadata())
    assert hints["retry-after"] == "1" and hints["grpc-retry-pushback-ms"] == "1000", hints
    # Cheap: client and server in this process spend far less than an answer's worth each
    # (a refusal measured 80 µs of the server's CPU, an answer 360-450 µs: bench/overload.py).
    assert elapsed < 4 and cpu / 200 < 0.010, (elapsed, cpu)
    assert holding.runs == [2], holding.runs  # only the call holding the thread began to run
    holding.release.set()
    assert all(answered_right(call.result(timeout=10)) for call in queued)  # the queued ones ran
    assert answered_right(stub.ModelInfer(digits_request(), timeout=10))  # and the budget is free again
    # Counted: every refusal, and the time the three queued calls waited for the thread.
    assert sample("serving_shed_requests_total") - shed == 200
    assert sample("serving_queue_wait_seconds_sum") - waited >= 3 * 3 * BUDGET_MS / 1000


def test_a_call_whose_deadline_passed_while_it_waited_is_not_run(served):
    stub, _, holding = served
    held = hold_the_thread(stub, holding)
    late = stub.ModelInfer.future(digits_request(ROWS[:1]), timeout=0.2)  # 1 row: told apart by rows
    with pytest.raises(grpc.RpcError) as expired:
        late.result(timeout=10)
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    holding.hold.clear()
    holding.release.set()
    assert answered_right(held[0].result(timeout=10))
    time.sleep(0.2)  # the thread takes the expired call next: it must not run it
    assert answered_right(stub.ModelInfer(digits_request(), timeout=10))
    assert holding.runs == [2, 2], holding.runs  # the held call and the last one; never 1 row


@pytest.mark.parametrize("probe", ["health", "live", "ready"])
def test_the_probes_answer_within_100_ms_while_every_thread_is_busy(served, probe):
    """The only thread held by a run, calls queued past the budget (and so refusing more): each
    probe is answered right, within 100 ms, ten times over."""
    stub, channel, holding = served
    queued = hold_the_thread(stub, holding, waiting=4)  # within the 8 calls a connection carries
    time.sleep(2 * BUDGET_MS / 1000)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(digits_request(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # the process sheds load
    check = {
        "health": lambda: health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING,
        "live": lambda: stub.ServerLive(messages.ServerLiveRequest(), timeout=5).live,
        "ready": lambda: stub.ServerReady(messages.ServerReadyRequest(), timeout=5).ready,
    }[probe]
    latencies = []
    for _ in range(10):
        started = time.perf_counter()
        assert check()
        latencies.append(time.perf_counter() - started)
    assert max(latencies) < 0.100, [f"{1000 * seconds:.1f} ms" for seconds in latencies]
    assert holding.runs == [2] and not any(call.done() for call in queued)  # still busy throughout
    holding.release.set()
    assert all(answered_right(call.result(timeout=10)) for call in queued)
