"""Every run bounded (service/core/limits.py), on a real `python -m service` (2 workers, 2 gRPC
processes) serving demand beside a runaway model: demand's signature, but a Loop driven by the
input runs for hours on demand's own example row (tests/onnx_models.runaway_loop).

- Two REST requests to it: one is stopped at its time limit (504, the limit named), the other is
  refused at once (503, Retry-After: the model holds all its long runs), and demand answers
  throughout, equal to the NumPy forward propagation, with liveness answered.
- Eight gRPC calls to it with a deadline: none runs past it (the processes' CPU goes back to idle),
  and both gRPC processes serve demand afterwards.
- The card's limit, the operator's ceiling over it, the request's `timeout` parameter (REST and
  gRPC, microseconds as tritonclient sends it), and a request whose deadline passed before it ran.
- The slots of a model's long runs are shared by processes and freed by the kernel when a holder dies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from modelcard import forward
from service.core.limits import Slots
from service.settings import Settings
from tests.conftest import MODELS, front_door, latest_version, metric_value
from tests.onnx_models import run, runaway_loop, write_version

EXAMPLE = [19.99, 4.5, 2000, 7]  # demand's example row: hours of Loop for the runaway model
LIMIT_MS, CEILING_MS = 1500, 2500
DEMAND = forward.Network.load(latest_version("demand"))
ROWS = np.array([[19.99, 4.5, 2000, 7], [5.0, 1.0, 300, 2], [45.0, 9.0, 12000, 9]], np.float32)


def body(rows, **parameters) -> bytes:
    rows = np.asarray(rows, np.float32)
    document = {"inputs": [{"name": "features", "shape": list(rows.shape), "datatype": "FP32",
                            "data": rows.ravel().tolist()}]}
    if parameters:
        document["parameters"] = parameters
    return json.dumps(document).encode()


def post(url: str, data: bytes, timeout: float = 30) -> tuple[int, dict, dict, float]:
    """(status, JSON body, headers, seconds)."""
    started = time.monotonic()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, raw, headers = answer.status, answer.read(), answer.headers
    except urllib.error.HTTPError as error:
        status, raw, headers = error.code, error.read(), error.headers
    return status, json.loads(raw), dict(headers), time.monotonic() - started


class Service(NamedTuple):
    url: str
    grpc: str
    grpc_processes: object
    repository: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    repository = tmp_path_factory.mktemp("limits") / "models"
    repository.mkdir()
    shutil.copytree(MODELS / "demand", repository / "demand")
    write_version(repository, "runaway", 1, runaway_loop())
    write_version(repository, "runaway", 2, runaway_loop(), limits={"timeout_ms": 300})
    write_version(repository, "runaway", 3, runaway_loop(), limits={"timeout_ms": 600_000})
    with front_door(repository, workers=2, SERVING_RUN_TIMEOUT_MS=str(LIMIT_MS),
                    SERVING_MAX_RUN_TIMEOUT_MS=str(CEILING_MS)) as server:
        yield Service(server.url, server.grpc, server.grpc_processes, repository)


class Demand(threading.Thread):
    """Demand asked over REST until stopped: its answers checked against the NumPy forward
    propagation, the slowest one kept; liveness likewise."""

    def __init__(self, url: str):
        super().__init__()
        self.url, self.stopping = url, threading.Event()
        self.answers, self.wrong, self.slowest, self.slowest_live = 0, [], 0.0, 0.0

    def run(self):
        expected = DEMAND.predict(ROWS)
        while not self.stopping.is_set():
            status, answer, _, seconds = post(f"{self.url}/v2/models/demand/infer", body(ROWS))
            got = np.array(answer["outputs"][0]["data"]).reshape(-1, 1) if status == 200 else None
            if got is None or np.abs(got - expected).max() > 1e-6:
                self.wrong.append((status, answer))
            self.answers += 1
            self.slowest = max(self.slowest, seconds)
            started = time.monotonic()
            with urllib.request.urlopen(f"{self.url}/v2/health/live", timeout=10):
                self.slowest_live = max(self.slowest_live, time.monotonic() - started)
            time.sleep(0.01)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.join(30)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def grpc_client(address: str):
    import tritonclient.grpc as triton

    return triton.InferenceServerClient(address, channel_args=[("grpc.use_local_subchannel_pool", 1)])


def grpc_infer(address: str, model: str, rows, version: str = "", **options):
    import tritonclient.grpc as triton

    client = grpc_client(address)
    try:
        features = triton.InferInput("features", list(np.shape(rows)), "FP32")
        features.set_data_from_numpy(np.asarray(rows, np.float32))
        return client.infer(model, [features], model_version=version, **options).as_numpy("probability")
    finally:
        client.close()


def grpc_status(address: str, model: str, rows, **options) -> tuple[str, str, float]:
    from tritonclient.utils import InferenceServerException

    started = time.monotonic()
    try:
        grpc_infer(address, model, rows, **options)
        return "OK", "", time.monotonic() - started
    except InferenceServerException as error:
        return error.status(), error.message(), time.monotonic() - started


def in_parallel(function, count: int) -> list:
    results = [None] * count

    def one(index):
        results[index] = function()

    threads = [threading.Thread(target=one, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_a_runaway_model_is_stopped_and_refused_while_demand_answers_over_rest(service):
    infer = f"{service.url}/v2/models/runaway/versions/1/infer"
    with Demand(service.url) as demand:
        time.sleep(0.3)
        answers = in_parallel(lambda: post(infer, body([EXAMPLE])), 2)
        time.sleep(0.3)
    stopped, refused = sorted(answers, key=lambda answer: -answer[0])
    assert stopped[0] == 504, stopped
    assert "its limit of 1500 ms (SERVING_RUN_TIMEOUT_MS)" in stopped[1]["error"]
    assert LIMIT_MS / 1000 <= stopped[3] < LIMIT_MS / 1000 + 2
    assert refused[0] == 503 and refused[2].get("Retry-After") == "1", refused
    assert "at its limit of 1 long run at once" in refused[1]["error"]
    assert refused[3] < 1.0  # refused at once, or stopped when it became a long run
    assert demand.answers > 20 and not demand.wrong, demand.wrong[:3]
    assert demand.slowest < 1.0 and demand.slowest_live < 1.0
    # The process serves on: the same model, on a row that runs no iteration, equals onnxruntime.
    status, answer, _, _ = post(infer, body([[0.1, 0.1, 0.1, 0.1]]))
    expected = run(service.repository / "runaway" / "1" / "model.onnx",
                   {"features": np.full((1, 4), 0.1, np.float32)})["probability"]
    assert status == 200 and answer["outputs"][0]["data"] == expected.ravel().tolist()
    with urllib.request.urlopen(f"{service.url}/metrics", timeout=10) as answer:
        exposition = answer.read().decode()
    assert metric_value(exposition, "serving_run_limits_total", model="runaway", limit="time") >= 1
    assert metric_value(exposition, "serving_run_limits_total", model="runaway", limit="share") >= 1


def test_grpc_calls_past_their_deadline_leave_every_process_serving(service):
    processes = service.grpc_processes()
    assert len(processes) == 2
    results = in_parallel(lambda: grpc_status(service.grpc, "runaway", [EXAMPLE], version="1",
                                              client_timeout=1.0), 8)
    assert {status for status, _, _ in results} <= {"StatusCode.DEADLINE_EXCEEDED",
                                                     "StatusCode.RESOURCE_EXHAUSTED"}, results
    assert all(seconds < 3 for _, _, seconds in results), results
    assert any("long run" in message for _, message, _ in results), results
    # No work left behind: both processes idle again (a run left going would take a whole core).
    time.sleep(LIMIT_MS / 1000)
    before = {pid: cpu_seconds(pid) for pid in processes}
    time.sleep(1.0)
    assert all(cpu_seconds(pid) - before[pid] < 0.3 for pid in processes), processes
    # Every gRPC process answers demand as the NumPy forward propagation does (new connections
    # are spread over the processes by the kernel).
    expected = DEMAND.predict(ROWS)
    for _ in range(8):
        np.testing.assert_allclose(grpc_infer(service.grpc, "demand", ROWS), expected, atol=1e-6)


def test_the_cards_limit_under_the_operators_ceiling(service):
    base = f"{service.url}/v2/models/runaway/versions"
    status, answer, _, seconds = post(f"{base}/2/infer", body([EXAMPLE]))
    assert status == 504 and "its card's limit of 300 ms" in answer["error"]
    assert 0.3 <= seconds < 1.3
    time.sleep(0.2)
    status, answer, _, seconds = post(f"{base}/3/infer", body([EXAMPLE]))
    assert status == 504 and f"its card's limit of {CEILING_MS} ms" in answer["error"]
    assert CEILING_MS / 1000 <= seconds < CEILING_MS / 1000 + 2


def test_the_requests_timeout_parameter_over_rest_and_grpc(service):
    infer = f"{service.url}/v2/models/runaway/versions/1/infer"
    status, answer, _, seconds = post(infer, body([EXAMPLE], timeout=200_000))
    assert status == 504 and "the request's timeout of 200000 us" in answer["error"], answer
    assert 0.2 <= seconds < 1.2
    time.sleep(0.2)
    status, message, seconds = grpc_status(service.grpc, "runaway", [EXAMPLE], version="1",
                                           timeout=200_000)
    assert status == "StatusCode.DEADLINE_EXCEEDED" and "200000 us" in message, message
    assert seconds < 1.2
    # Past before the run: not run at all, whatever the model.
    status, answer, _, _ = post(f"{service.url}/v2/models/demand/infer", body(ROWS, timeout=1))
    assert status == 504 and "was not run" in answer["error"], answer
    for wrong in ("soon", -5, 1.5, True):
        status, answer, _, _ = post(f"{service.url}/v2/models/demand/infer", body(ROWS, timeout=wrong))
        assert status == 400 and "parameters.timeout" in answer["error"], (wrong, answer)


HOLDER = """
import sys, time
from pathlib import Path
from typing import NamedTuple
from service.core.limits import Slots
slots = Slots(1, Path(sys.argv[1]))
print(slots.take(), flush=True)
time.sleep(60)
"""


def test_slots_are_shared_by_processes_and_freed_when_a_holder_dies(tmp_path):
    path = tmp_path / "model"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).parent.parent)
    try:
        assert holder.stdout.readline().strip() == "0"
        mine = Slots(2, path)
        assert mine.take() == 1  # slot 0 is the other process's
        assert mine.take() is None and not mine.free()
        mine.give(1)
        assert mine.free()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        assert [mine.take(), mine.take(), mine.take()] == [0, 1, None]
    finally:
        holder.kill()
        holder.wait()


def test_a_ceiling_at_or_over_gunicorns_timeout_is_refused():
    with pytest.raises(ValueError, match="SERVING_MAX_RUN_TIMEOUT_MS=30000 must be below SERVING_TIMEOUT"):
        Settings.load({"max_run_timeout_ms": 30_000})
    with pytest.raises(ValueError, match="SERVING_RUN_TIMEOUT_MS=25000 must not be above"):
        Settings.load({"run_timeout_ms": 25_000})
    with pytest.raises(ValueError, match="SERVING_MODEL_LONG_RUNS"):
        Settings.load({"model_long_runs": "some"})


def test_a_model_at_its_share_is_refused_over_grpc_with_a_retry_hint(service):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    holding = threading.Thread(target=post, args=(f"{service.url}/v2/models/runaway/versions/1/infer",
                                                  body([EXAMPLE], timeout=1_500_000)))
    holding.start()
    time.sleep(0.5)  # a long run now: it holds the model's one slot
    request = service_pb2.ModelInferRequest(model_name="runaway", model_version="1")
    features = request.inputs.add(name="features", datatype="FP32", shape=[1, 4])
    features.contents.fp32_contents.extend(EXAMPLE)
    try:
        with grpc.insecure_channel(service.grpc) as channel, pytest.raises(grpc.RpcError) as refused:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=5)
    finally:
        holding.join(10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    assert "at its limit of 1 long run" in refused.value.details()
    assert ("retry-after", "1") in tuple(refused.value.trailing_metadata())


class Model:
    """What the limits read of a loaded version."""

    def __init__(self):
        self.name, self.version, self.card = "held", 1, type("Card", (), {"limits": {}})()

    @staticmethod
    def run_options():
        return type("Options", (), {"terminate": False})()


def test_the_watchdog_holds_no_model_once_its_run_ended(tmp_path):
    """A version unloaded is freed (its mapped weights with it), even when the watchdog saw it run."""
    import gc
    import weakref

    from service.core.limits import TICK, Limits
    from service.core.types import Call, InferenceRequest

    limits = Limits(Settings.load({"run_slots": tmp_path}))
    model = Model()
    run = limits.start(model, Call("v2"), InferenceRequest({}))
    time.sleep(5 * TICK)  # the watchdog has looked at the run
    limits.end(run)
    time.sleep(5 * TICK)
    freed = weakref.ref(model)
    del model, run
    gc.collect()
    assert freed() is None
