"""A memory budget for every run (service/repository/sessions.py, docs/memory.md), on a real
`python -m service` (nginx, 2 gunicorn workers, 2 gRPC processes) at SERVING_RUN_MEMORY_MB=256:

- a model with demand's signature whose Expand is sized by the input (tests/memory_hungry.py)
  asks for 5.2 GB on demand's example row: refused at once with 413 and a JSON error naming the
  model, the bytes asked for, the budget and the setting over REST, RESOURCE_EXHAUSTED over gRPC;
- a run that fits but takes 100 MB gives it back: every serving process's RSS ends near where
  it was before;
- every process keeps serving (the same pids, none killed), and answers as onnxruntime directly
  (demand) and the closed form (the hungry model on a small row);
- the model cache's memory-mapped weights stay shared with the budget on: no process holds a
  private copy of them, and their PSS summed over the processes is one copy.

Beside it: the default derived from the machine, which errors are refusals, the probe model, and a
model whose prepacked weights pass the budget refused (else onnxruntime drops the cap).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from bench.harness import memory
from service.repository import sessions
from service.settings import Settings
from tests.conftest import MODELS, ROOT, front_door
from tests.memory_hungry import EXAMPLE_ROW, asked_bytes, expand_network, expected
from tests.onnx_models import conv_network, dense_network, run, write_version
from tests.test_reliability import copy_repository, wait_for
from tests.test_shared_models_live import mapping, serving_processes, weights_files

BUDGET_MB = 256
REFUSED_WITHIN = 1.0  # seconds: onnxruntime refuses at the allocation (0.6 ms measured in-process)
FITS = np.array([[10.0, 10.0, 10.0, 10.0]], np.float32)  # 40 * 10000 * 256 bytes: 102 MB, fits
SMALL = np.array([[0.5, 0.25, 1.0, 0.25]], np.float32)  # 5 MB
BACK_WITHIN_MB = 30  # what a process may keep of a 102 MB run (without shrinkage it kept all)
DEMAND_ROWS = np.array([EXAMPLE_ROW, [5.0, 0.0, 0.0, 1.0], [50.0, 15.0, 5000.0, 10.0]], np.float32)


def rest(url: str, model: str, rows: np.ndarray) -> tuple[int, dict]:
    body = json.dumps({"inputs": [{"name": "features", "shape": list(rows.shape), "datatype": "FP32",
                                   "data": rows.ravel().tolist()}]}).encode()
    request = urllib.request.Request(f"{url}/v2/models/{model}/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def rest_output(url: str, model: str, rows: np.ndarray) -> np.ndarray:
    status, body = rest(url, model, rows)
    assert status == 200, body
    output = body["outputs"][0]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def grpc_call(address: str, model: str, rows: np.ndarray):
    """The output, or the error tritonclient raised."""
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(address, channel_args=[("grpc.use_local_subchannel_pool", 1)])
    try:
        features = triton.InferInput("features", list(rows.shape), "FP32")
        features.set_data_from_numpy(rows)
        return client.infer(model, [features], client_timeout=60).as_numpy("probability")
    except InferenceServerException as error:
        return error
    finally:
        client.close()


def rss_and_pss(pids: list[int]) -> dict[int, tuple[float, float]]:
    return {figures["pid"]: (figures["rss_mb"], figures["pss_mb"]) for figures in memory(pids)}


def assert_refusal_names_everything(message: str) -> None:
    assert "'hungry'" in message
    assert f"{asked_bytes(np.array([EXAMPLE_ROW])):,} bytes" in message
    assert f"{BUDGET_MB << 20:,} bytes" in message and f"SERVING_RUN_MEMORY_MB={BUDGET_MB}" in message


def test_a_run_over_its_budget_is_refused_at_once_and_memory_comes_back(tmp_path):
    repository = copy_repository(tmp_path)
    write_version(repository, "hungry", 1, expand_network())
    conv = write_version(repository, "conv", 1, conv_network(channels=512, layers=5, seed=1))
    cache = tmp_path / "cache"
    demand = MODELS / "demand" / "1" / "model.onnx"
    with front_door(repository, workers=2, SERVING_MODEL_CACHE=str(cache), SERVING_POLL_INTERVAL="0",
                    SERVING_RUN_MEMORY_MB=str(BUDGET_MB)) as server:
        wait_for(lambda: len(serving_processes(server)) == 4)
        processes = serving_processes(server)
        # Each worker (after gunicorn's fork) and each gRPC process registered its own budget.
        assert server.log_text().count(f"a run may take up to {BUDGET_MB} MB") == 4
        for _ in range(8):  # every process warm: it has run the models once
            np.testing.assert_allclose(rest_output(server.url, "hungry", SMALL), expected(SMALL))
            grpc_call(server.grpc, "hungry", SMALL)
        before = rss_and_pss(processes)

        for _ in range(4):  # each worker, in turn
            started = time.monotonic()
            status, body = rest(server.url, "hungry", np.array([EXAMPLE_ROW], np.float32))
            assert time.monotonic() - started < REFUSED_WITHIN
            assert status == 413, body
            assert_refusal_names_everything(body["error"])
        for _ in range(4):
            started = time.monotonic()
            error = grpc_call(server.grpc, "hungry", np.array([EXAMPLE_ROW], np.float32))
            assert time.monotonic() - started < REFUSED_WITHIN
            assert "RESOURCE_EXHAUSTED" in str(error.status()), error
            assert_refusal_names_everything(error.message())

        for _ in range(4):  # runs that fit take 102 MB each, and give it back
            np.testing.assert_allclose(rest_output(server.url, "hungry", FITS), expected(FITS))
            np.testing.assert_allclose(grpc_call(server.grpc, "hungry", FITS), expected(FITS))
        after = rss_and_pss(processes)
        for pid in processes:
            for kind in (0, 1):  # RSS, PSS
                assert after[pid][kind] - before[pid][kind] < BACK_WITHIN_MB, (pid, before, after)

        # Serving on, as onnxruntime directly.
        wanted = run(demand, {"features": DEMAND_ROWS})["probability"]
        for _ in range(4):
            np.testing.assert_allclose(rest_output(server.url, "demand", DEMAND_ROWS), wanted, rtol=1e-6)
            np.testing.assert_allclose(grpc_call(server.grpc, "demand", DEMAND_ROWS), wanted, rtol=1e-6)

        # The cache's weights: mapped by every process, never copied, one copy's PSS in all.
        digest = json.loads((conv / "card.json").read_text())["files"]["model.onnx"]["sha256"]
        weights = weights_files(cache)[digest]
        image = {"inputs": [{"name": "image", "shape": [1, 3, 16, 16], "datatype": "FP32",
                             "data": [0.5] * 768}]}
        for _ in range(8):  # every worker touches the pages
            request = urllib.request.Request(f"{server.url}/v2/models/conv/infer",
                                             data=json.dumps(image).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30):
                pass
        mapped = {pid: mapping(pid, weights) for pid in processes}
        for found in mapped.values():
            assert found.get("mappings") and found.get("Private_Dirty", 0) == 0, mapped
        pss_kb = sum(found.get("Pss", 0) for found in mapped.values())
        assert pss_kb <= 1.05 * weights.stat().st_size / 1024, (pss_kb, mapped)
        print(f"(RSS, PSS) MB before {before}, after {after}; weights PSS in all {pss_kb / 1024:.1f} MB "
              f"of a {weights.stat().st_size / 2**20:.1f} MB file")

        assert serving_processes(server) == processes  # none died or was killed
        assert "Killed" not in server.log_text()


def test_the_budget_is_derived_from_the_machine_and_the_processes(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16777216 kB\nMemFree:        1 kB\n")
    limit = tmp_path / "memory.max"
    assert sessions.machine_memory((limit,), meminfo) == 16 << 30  # no cgroup file
    limit.write_text("max\n")
    assert sessions.machine_memory((limit,), meminfo) == 16 << 30  # cgroup v2 without a limit
    limit.write_text(f"{2 << 30}\n")
    assert sessions.machine_memory((limit,), meminfo) == 2 << 30
    # Half of 2 GiB over 2 workers + 2 gRPC processes.
    assert sessions.default_budget_mb(2, 2 << 30) == 256
    assert sessions.budget_mb("0", 2) == 0 and sessions.budget_mb("512", 2) == 512
    assert Settings.load(environ={}).run_memory_mb == "auto"
    with pytest.raises(ValueError, match="SERVING_RUN_MEMORY_MB='lots'"):
        Settings.load(environ={"SERVING_RUN_MEMORY_MB": "lots"})


@pytest.mark.parametrize("text", [
    "Available memory of 268434688 is smaller than requested bytes of 5199360000",
    "Failed to allocate memory for requested buffer of size 5199360000"])
def test_only_onnxruntime_arena_refusals_are_over_budget(text, monkeypatch):
    monkeypatch.setattr(sessions, "_budget", 256 << 20)
    message = sessions.over_budget(RuntimeError(f"[ONNXRuntimeError] : 1 : FAIL : {text}"), "hungry")
    assert "5,199,360,000 bytes" in message and "SERVING_RUN_MEMORY_MB=256" in message
    assert sessions.over_budget(RuntimeError("Invalid rank for input: features"), "hungry") is None
    monkeypatch.setattr(sessions, "_budget", 0)  # no budget: onnxruntime's error as before (400)
    assert sessions.over_budget(RuntimeError(text), "hungry") is None


def test_the_probe_model_is_one_expand_sized_by_its_input():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Expand", ["one", "shape"], ["big"])], "arena_probe",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("big", TensorProto.UINT8, [None])],
        [numpy_helper.from_array(np.array([1], np.uint8), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    assert model.SerializeToString() == sessions.PROBE_MODEL


# In a process of its own: the budget is registered once per process, and pytest's may have one.
PREPACKED = """
import sys
from pathlib import Path
import numpy as np
from service.repository import sessions
from service.repository.version_folder import LoadError, load_version
sessions.register(int(sys.argv[2]))
repository = Path(sys.argv[1])
try:
    dense = load_version(repository / "dense" / "1", "dense", 1, (1, 1), None)
    rows = np.random.default_rng(0).standard_normal((3, 2048)).astype(np.float32)
    np.save(repository / "served.npy", dense.infer({"features": rows}, ["scores"])["scores"])
    print("loaded", flush=True)
except LoadError as error:
    print(f"refused: {error}", flush=True)
hungry = load_version(repository / "hungry" / "1", "hungry", 1, (1, 1), None)  # dense, if loaded, held
try:
    hungry.infer({"features": np.array([[40.0, 0, 0, 0]], np.float32)}, ["probability"])  # 97 MB
    print("ran")
except Exception as error:
    print("refused" if sessions.over_budget(error, "hungry") else f"failed: {error}")
"""


@pytest.mark.parametrize("budget_mb, loaded", [(60, False), (120, True)])
def test_prepacked_weights_over_the_budget_are_refused_so_that_the_cap_holds(tmp_path, budget_mb, loaded):
    """onnxruntime reserves prepacked MatMul weights (64 MB here) in the capped arena without
    checking the cap, and past it enforces the cap no more: such a model is refused, and a 97 MB
    run is refused either way."""
    write_version(tmp_path, "dense", 1, dense_network())
    write_version(tmp_path, "hungry", 1, expand_network())
    done = subprocess.run([sys.executable, "-c", PREPACKED,
                           str(tmp_path), str(budget_mb)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr[-2000:]
    if loaded:
        assert lines == ["loaded", "refused"]
        rows = np.random.default_rng(0).standard_normal((3, 2048)).astype(np.float32)
        wanted = run(tmp_path / "dense" / "1" / "model.onnx", {"features": rows})["scores"]
        np.testing.assert_allclose(np.load(tmp_path / "served.npy"), wanted, rtol=1e-4, atol=1e-4)
    else:
        assert lines[0].startswith("refused: its prepacked weights do not fit") and \
            f"SERVING_RUN_MEMORY_MB={budget_mb}" in lines[0]
        assert lines[1:] == ["refused"]
