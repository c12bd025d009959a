"""The Open Inference Protocol over gRPC.

The codec without a server (service/grpc/codec.py over the generated stubs), then a real service
started by the launcher (`python -m service`, tests.conftest.front_door) answering
tritonclient.grpc with raw tensors and a typed-contents client built on tritonclient's own protos
(an independent copy of the field numbers): the built-in models against the NumPy forward
propagation, every datatype through the echo models, the bad-request catalog with its status
codes (each followed by a good request), health, reflection, metrics, and processes killed or
reloaded under load.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import urllib.request
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from modelcard.tables import DATATYPE_OF
from service.core.dataplane import DataPlane
from service.core.errors import BadRequest
from service.grpc import codec
from service.repository.registry import ModelRegistry
from service.settings import Settings
from service.stubs import messages
from tests.conftest import MODEL_NAMES, PARITY, front_door, latest_version, metric_value
from tests.echo_model import DTYPES, sample, write_echo_model

TYPED = tuple(name for name in DTYPES if name != "FP16")  # the datatypes with a contents field
LIMITS = {"SERVING_MAX_BATCH": "16", "SERVING_MAX_BODY_BYTES": "100000"}
ROW = [25.0, 7.5, 2500.0, 5.5]


def echo_outputs(inputs: dict) -> dict:
    return {("token_out" if name == "token" else "y_" + name[2:]): values for name, values in inputs.items()}


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """The built-in models, `echo` (every datatype) and `echo-typed` (all but FP16)."""
    root = tmp_path_factory.mktemp("grpc-models")
    for name in MODEL_NAMES:
        shutil.copytree(latest_version(name), root / name / latest_version(name).name)
    write_echo_model(root)
    write_echo_model(root, model_name="echo-typed", datatypes=TYPED)
    return root


# --- typed requests and answers, with any generated module of the protocol ----------------------

def typed_request(module, model: str, inputs: dict, **fields):
    """A ModelInferRequest with typed contents, built with `module` (ours or tritonclient's)."""
    request = module.ModelInferRequest(model_name=model, **fields)
    for name, values in inputs.items():
        datatype = DATATYPE_OF[values.dtype]
        tensor = request.inputs.add(name=name, datatype=datatype, shape=values.shape)
        getattr(tensor.contents, codec.CONTENTS_FIELD[datatype]).extend(values.ravel().tolist())
    return request


def raw_request(module, model: str, inputs: dict, **fields):
    request = module.ModelInferRequest(model_name=model, **fields)
    for name, values in inputs.items():
        request.inputs.add(name=name, datatype=DATATYPE_OF[values.dtype], shape=values.shape)
        request.raw_input_contents.append(values.astype(values.dtype.newbyteorder("<")).tobytes())
    return request


def answer_arrays(response) -> dict[str, np.ndarray]:
    """The outputs of a ModelInferResponse, raw or typed, as arrays."""
    found = {}
    for index, tensor in enumerate(response.outputs):
        dtype = np.dtype(DTYPES[tensor.datatype])
        if response.raw_output_contents:
            values = np.frombuffer(response.raw_output_contents[index], dtype=dtype.newbyteorder("<"))
        else:
            values = np.array(getattr(tensor.contents, codec.CONTENTS_FIELD[tensor.datatype]), dtype=dtype)
        found[tensor.name] = values.reshape(tuple(tensor.shape))
    return found


def assert_same(answer: dict, expected: dict) -> None:
    assert list(answer) == list(expected)
    for name, values in expected.items():
        assert answer[name].dtype == values.dtype, name
        np.testing.assert_array_equal(answer[name], values, err_msg=name)


# --- the codec, without a server ----------------------------------------------------------------

@pytest.fixture(scope="module")
def plane(repository):
    registry = ModelRegistry(repository).load()
    assert registry.ready, registry.unservable()
    return DataPlane(registry, Settings(max_batch=16))


def round_trip(plane, request):
    response = plane.infer(plane.model(request.model_name), codec.decode_request(request))
    encoded = codec.encode_response(response, codec.raw_outputs(request, response))
    return messages.ModelInferResponse.FromString(encoded.SerializeToString())


def test_raw_tensors_of_every_datatype_round_trip_raw(plane):
    inputs = sample(rows=3)
    answer = round_trip(plane, raw_request(messages, "echo", inputs, id="r1"))
    assert answer.id == "r1" and answer.model_name == "echo" and answer.model_version == "1"
    assert len(answer.raw_output_contents) == len(answer.outputs)
    assert_same(answer_arrays(answer), echo_outputs(inputs))


def test_typed_contents_of_every_datatype_round_trip_typed(plane):
    inputs = sample(rows=3, datatypes=TYPED)
    answer = round_trip(plane, typed_request(messages, "echo-typed", inputs))
    assert not answer.raw_output_contents
    assert_same(answer_arrays(answer), echo_outputs(inputs))


def test_raw_output_parameter_and_fp16_choose_raw_answers(plane):
    inputs = sample(datatypes=TYPED)
    request = typed_request(messages, "echo-typed", inputs)
    request.parameters["raw_output"].bool_param = True
    assert round_trip(plane, request).raw_output_contents
    request = raw_request(messages, "echo-typed", inputs)
    request.parameters["raw_output"].bool_param = False
    answer = round_trip(plane, request)
    assert not answer.raw_output_contents
    assert_same(answer_arrays(answer), echo_outputs(inputs))
    request = raw_request(messages, "echo", sample())
    request.parameters["raw_output"].bool_param = False
    assert round_trip(plane, request).raw_output_contents  # an FP16 output cannot be typed


def test_parameters_reach_the_data_plane_and_outputs_select_a_subset():
    request = typed_request(messages, "demand", {"features": np.array([ROW], dtype=np.float32)})
    request.parameters["flag"].bool_param = True
    request.parameters["count"].int64_param = 3
    request.parameters["text"].string_param = "x"
    request.outputs.add(name="y_fp32").parameters["binary_data"].bool_param = True
    request.outputs.add(name="token_out")
    decoded = codec.decode_request(request)
    assert decoded.parameters == {"flag": True, "count": 3, "text": "x"}
    assert [(o.name, o.parameters) for o in decoded.outputs] == [("y_fp32", {"binary_data": True}),
                                                                 ("token_out", {})]
    assert decoded.id is None


@pytest.mark.parametrize(("datatype", "field", "values", "message"), [
    ("INT8", "int_contents", [128, 0, 0], "range of INT8"),
    ("UINT16", "uint_contents", [70000, 0, 0], "range of UINT16"),
    ("FP32", "int_contents", [1, 2, 3], "takes its values in contents.fp32_contents"),
    ("FP32", "fp32_contents", [1, 2], "has 2 values but shape [1, 3] needs 3"),
    ("FP16", "fp32_contents", [1, 2, 3], "FP16 has no typed contents"),
    ("BYTES", "bytes_contents", [b"a", b"b", b"c"], "BYTES is not supported"),
    ("FLOAT", "fp32_contents", [1, 2, 3], "unknown datatype"),
])
def test_typed_contents_that_do_not_fit_their_datatype_are_refused(datatype, field, values, message):
    request = messages.ModelInferRequest(model_name="echo")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[1, 3])
    getattr(tensor.contents, field).extend(values)
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        codec.decode_request(request)


def test_raw_and_typed_are_not_mixed_and_raw_counts_match():
    request = raw_request(messages, "demand", {"features": np.array([ROW], dtype=np.float32)})
    request.inputs[0].contents.fp32_contents.extend(ROW)
    with pytest.raises(BadRequest, match="either contents or raw_input_contents"):
        codec.decode_request(request)
    request = raw_request(messages, "demand", {"features": np.array([ROW], dtype=np.float32)})
    request.raw_input_contents.append(b"")
    with pytest.raises(BadRequest, match="raw_input_contents has 2 entries but inputs has 1"):
        codec.decode_request(request)
    with pytest.raises(BadRequest, match="'inputs'"):
        codec.decode_request(messages.ModelInferRequest(model_name="demand"))


def test_our_messages_and_tritonclients_agree_on_the_wire():
    from tritonclient.grpc import service_pb2 as triton

    inputs = sample(datatypes=TYPED)
    ours = typed_request(messages, "echo-typed", inputs, id="w", model_version="1")
    ours.parameters["p"].int64_param = 5
    theirs = triton.ModelInferRequest.FromString(ours.SerializeToString())
    assert typed_request(triton, "echo-typed", inputs, id="w", model_version="1").inputs == theirs.inputs
    assert theirs.parameters["p"].int64_param == 5 and theirs.id == "w"
    back = messages.ModelInferRequest.FromString(raw_request(triton, "echo", sample()).SerializeToString())
    assert_same(codec.decode_request(back).inputs, sample())


def test_stale_stubs_are_refused(tmp_path, monkeypatch):
    import service.stubs as stubs

    stubs.check()
    stamp = tmp_path / "stamp"
    stamp.write_text("0" * 64 + "\n")
    monkeypatch.setattr(stubs, "STAMP", stamp)
    with pytest.raises(stubs.StubsOutOfDate, match="make stubs"):
        stubs.check()
    monkeypatch.setattr(stubs, "STAMP", tmp_path / "missing")
    with pytest.raises(stubs.StubsOutOfDate, match="missing"):
        stubs.check()


# --- a real service, started by the launcher ----------------------------------------------------

@pytest.fixture(scope="module")
def served(repository):
    with front_door(repository, workers=2, **LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def stub(served):
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(served.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def triton_client(address: str):
    import tritonclient.grpc as triton

    return triton.InferenceServerClient(address)


def triton_infer(client, model: str, inputs: dict, outputs=None):
    import tritonclient.grpc as triton

    tensors = []
    for name, values in inputs.items():
        tensor = triton.InferInput(name, list(values.shape), DATATYPE_OF[values.dtype])
        tensor.set_data_from_numpy(values)
        tensors.append(tensor)
    wanted = None if outputs is None else [triton.InferRequestedOutput(name) for name in outputs]
    return client.infer(model, tensors, outputs=wanted, request_id="t")


def test_tritonclient_raw_tensors_equal_the_numpy_forward_propagation(served, cases):
    client = triton_client(served.grpc)
    for name, case in cases.items():
        result = triton_infer(client, name, {case.input_name: case.x.astype(np.float32)})
        got = result.as_numpy(case.output_name)
        assert got.shape == case.expected.shape, name
        assert np.max(np.abs(got - case.expected)) <= PARITY, name
        assert result.get_response().id == "t" and result.get_response().model_version == "1"


def test_typed_contents_equal_the_numpy_forward_propagation(stub, cases):
    from tritonclient.grpc import service_pb2 as triton

    for name, case in cases.items():
        answer = stub.ModelInfer(typed_request(triton, name, {case.input_name: case.x.astype(np.float32)}))
        assert not answer.raw_output_contents, name
        got = answer_arrays(answer)[case.output_name]
        assert np.max(np.abs(got - case.expected)) <= PARITY, name


def test_every_datatype_round_trips_raw_with_tritonclient(served):
    client = triton_client(served.grpc)
    inputs = sample(rows=4, seed=1)
    result = triton_infer(client, "echo", inputs)
    assert_same({name: result.as_numpy(name) for name in echo_outputs(inputs)}, echo_outputs(inputs))
    subset = triton_infer(client, "echo", inputs, outputs=["y_fp16", "token_out"])
    assert [o.name for o in subset.get_response().outputs] == ["y_fp16", "token_out"]
    np.testing.assert_array_equal(subset.as_numpy("y_fp16"), inputs["x_fp16"])


def test_every_typed_datatype_round_trips_typed(stub):
    from tritonclient.grpc import service_pb2 as triton

    inputs = sample(rows=4, seed=2, datatypes=TYPED)
    answer = stub.ModelInfer(typed_request(triton, "echo-typed", inputs))
    assert_same(answer_arrays(answer), echo_outputs(inputs))


def test_health_metadata_and_readiness(served, stub):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tritonclient.grpc import service_pb2 as triton

    client = triton_client(served.grpc)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("demand") and client.is_model_ready("echo", "1")
    metadata = client.get_model_metadata("echo")
    assert metadata.platform == "onnx_onnxv1" and list(metadata.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs][:2] == [
        ("x_bool", "BOOL", [-1, 3]), ("x_uint8", "UINT8", [-1, 3])]
    assert client.get_server_metadata().name == "onnx-serving"
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelReady(triton.ModelReadyRequest(name="nope"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(served.grpc) as channel:
        checker = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = checker.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_describes_the_services(served):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(served.grpc) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) >= {"inference.GRPCInferenceService", "grpc.health.v1.Health"}
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        assert [m.name for m in service.methods] == ["ServerLive", "ServerReady", "ModelReady",
                                                     "ServerMetadata", "ModelMetadata", "ModelInfer"]
        fields = pool.FindMessageTypeByName("inference.ModelInferRequest").fields_by_name
        assert fields["raw_input_contents"].number == 7


def test_grpc_calls_are_counted_in_metrics(served):
    client = triton_client(served.grpc)
    before = urllib.request.urlopen(f"{served.url}/metrics", timeout=10).read().decode()
    triton_infer(client, "demand", {"features": np.array([ROW], dtype=np.float32)})
    after = urllib.request.urlopen(f"{served.url}/metrics", timeout=10).read().decode()
    labels = {"model": "demand", "protocol": "grpc", "status": "OK"}
    assert metric_value(after, "serving_requests_total", **labels) == \
        metric_value(before, "serving_requests_total", **labels) + 1


# --- the bad-request catalog, over gRPC ---------------------------------------------------------

@dataclass(frozen=True)
class Bad:
    code: grpc.StatusCode
    message: str
    request: object  # a tritonclient ModelInferRequest


def features(triton, values=None, model="demand", datatype="FP32", shape=(1, 4), field="fp32_contents",
             **fields):
    request = triton.ModelInferRequest(model_name=model, **fields)
    tensor = request.inputs.add(name="features", datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(ROW if values is None else values)
    return request


def raw_features(triton, blob: bytes, shape=(1, 4), datatype="FP32", model="demand", name="features"):
    request = triton.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(blob)
    return request


def catalog():
    from tritonclient.grpc import service_pb2 as triton

    one_row = np.array([ROW], dtype=np.float32).tobytes()
    nan_row = np.array([[np.nan, 1, 2, 3]], np.float32).tobytes()
    invalid, not_found, exhausted = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                     grpc.StatusCode.RESOURCE_EXHAUSTED)
    with_output = features(triton)
    with_output.outputs.add(name="logits")
    twice = features(triton)
    twice.inputs.append(twice.inputs[0])
    both = raw_features(triton, one_row)
    both.inputs[0].contents.fp32_contents.extend(ROW)
    extra = raw_features(triton, one_row)
    extra.raw_input_contents.append(one_row)
    raw_output_text = features(triton)
    raw_output_text.parameters["raw_output"].string_param = "yes"
    entries = {
        "model-unknown": Bad(not_found, "'nope' not found", features(triton, model="nope")),
        "version-unknown": Bad(not_found, "version 7", features(triton, model_version="7")),
        "version-abc": Bad(not_found, "'abc'", features(triton, model_version="abc")),
        "version-0": Bad(not_found, "'0'", features(triton, model_version="0")),
        "inputs-empty": Bad(invalid, "'inputs'", triton.ModelInferRequest(model_name="demand")),
        "name-unknown": Bad(invalid, "unknown input", raw_features(triton, one_row, name="pixels")),
        "input-twice": Bad(invalid, "given twice", twice),
        "datatype-missing": Bad(invalid, "'datatype'", features(triton, datatype="")),
        "datatype-unknown": Bad(invalid, "unknown datatype", features(triton, datatype="FLOAT32")),
        "datatype-bytes": Bad(invalid, "BYTES is not supported", features(triton, datatype="BYTES")),
        "shape-width-3": Bad(invalid, "does not match", features(triton, ROW[:3], shape=(1, 3))),
        "shape-rank-1": Bad(invalid, "does not match", features(triton, shape=(4,))),
        "shape-negative": Bad(invalid, "non-negative", features(triton, shape=(-1, 4))),
        "batch-empty": Bad(invalid, "empty", features(triton, [], shape=(0, 4))),
        "contents-count": Bad(invalid, "has 4 values but shape [2, 4] needs 8",
                              features(triton, shape=(2, 4))),
        "contents-field": Bad(invalid, "contents.fp32_contents", features(triton, [25, 7, 2500, 5],
                                                                          field="int_contents")),
        "bool-for-fp32": Bad(invalid, "takes FP32", features(triton, [True] * 4, datatype="BOOL",
                                                             field="bool_contents")),
        "int8-range": Bad(invalid, "range of INT8", features(triton, [25, 7, 2500, 5], datatype="INT8",
                                                             field="int_contents")),
        "beyond-fp32": Bad(invalid, "FP32 range", features(triton, [1e39, 7.5, 2500, 5.5], datatype="FP64",
                                                           field="fp64_contents")),
        "fp16-typed": Bad(invalid, "FP16 has no typed contents", features(triton, datatype="FP16")),
        "raw-nan": Bad(invalid, "NaN", raw_features(triton, nan_row)),
        "raw-size-vs-shape": Bad(invalid, "needs 16", raw_features(triton, one_row[:12])),
        "raw-count": Bad(invalid, "raw_input_contents has 2 entries but inputs has 1",
                         extra),
        "raw-and-contents": Bad(invalid, "either contents or raw_input_contents", both),
        "raw-output-text": Bad(invalid, "raw_output", raw_output_text),
        "outputs-unknown": Bad(invalid, "unknown output 'logits'", with_output),
        "other-model-input": Bad(invalid, "unknown input", features(triton, model="digits-binary")),
        "batch-over-limit": Bad(exhausted, "limit of 16", features(triton, ROW * 17, shape=(17, 4))),
        "message-over-limit": Bad(exhausted, "", raw_features(
            triton, np.zeros((500, 64), np.float32).tobytes(), shape=(500, 64), model="digits",
            name="pixels")),
    }
    return entries


ROWS = [ROW, [10.0, 2.0, 4000.0, 9.0], [45.0, 14.0, 100.0, 1.5]]


def test_bad_requests_get_their_status_code_and_the_next_answer_is_right(served, stub):
    from modelcard import forward

    expected = forward.Network.load(latest_version("demand")).predict(np.array(ROWS)).ravel()
    from tritonclient.grpc import service_pb2 as triton

    good = features(triton, [v for row in ROWS for v in row], shape=(3, 4))
    problems = []
    for name, entry in catalog().items():
        try:
            stub.ModelInfer(entry.request, timeout=30)
            problems.append(f"{name}: answered OK")
        except grpc.RpcError as error:
            if error.code() != entry.code or entry.message not in (error.details() or ""):
                problems.append(f"{name}: {error.code()} {error.details()!r}")
        answer = stub.ModelInfer(good, timeout=30)
        got = answer_arrays(answer)["probability"].ravel()
        assert np.max(np.abs(got - expected)) <= PARITY, f"after {name}"
    assert stub.ServerLive(triton.ServerLiveRequest()).live
    assert not problems, "\n".join(problems)
    assert "Traceback" not in served.log_text()


# --- processes killed and reloaded under load ---------------------------------------------------

def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


class Load:
    """Client threads, each with its own channel, sending single-row requests until stopped.

    Each channel has its own connection (grpc.use_local_subchannel_pool: by default, channels
    to the same address share one), so the kernel spreads them over the server processes.

    wait_for_ready: a call made while the channel reconnects waits for it instead of failing at
    once. Without it, a reconnection that lands on the killed process's listening socket in the
    moments before the kernel closes it is refused, and the channel then fails every call fast
    for its reconnect backoff (a second), though the other process serves the port throughout."""

    def __init__(self, address: str, threads: int = 4):
        self.address, self.stop = address, threading.Event()
        self.failures: list[list[tuple[float, str]]] = [[] for _ in range(threads)]
        self.answers = [0] * threads
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(threads)]

    def run(self, index: int) -> None:
        from tritonclient.grpc import service_pb2 as triton
        from tritonclient.grpc import service_pb2_grpc

        request = features(triton)
        with grpc.insecure_channel(self.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while not self.stop.is_set():
                try:
                    stub.ModelInfer(request, timeout=10, wait_for_ready=True)
                    self.answers[index] += 1
                except grpc.RpcError as error:
                    self.failures[index].append((time.monotonic(), f"{error.code()} {error.details()}"))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        wait_for(lambda: all(self.answers))
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


@pytest.fixture()
def fresh_service(repository):
    with front_door(repository, workers=2) as running:
        wait_for(lambda: len(running.grpc_processes()) == 2)
        yield running


def test_a_killed_grpc_process_is_replaced_and_loses_at_most_its_requests_in_flight(fresh_service):
    """Lost: only calls sent to the killed process before it was gone: a client's call in flight,
    and any sent on a reconnection that the kernel queued on the dying process's listening
    socket in the millisecond before it closed; none after that (the other process and then the
    replacement serve the port)."""
    server = fresh_service
    with Load(server.grpc) as load:
        victim = server.grpc_processes()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not os.path.exists(f"/proc/{victim}"))
        gone = time.monotonic()
        wait_for(lambda: len(server.grpc_processes()) == 2 and victim not in server.grpc_processes())
        counted = list(load.answers)
        wait_for(lambda: all(now > then for now, then in zip(load.answers, counted, strict=True)))
    failures = [failure for failed in load.failures for failure in failed]
    assert all("UNAVAILABLE" in text and when <= gone + 0.5 for when, text in failures), (gone, failures)
    assert "exited with code -9; starting another" in server.log_text()


def test_sighup_replaces_every_grpc_process_while_the_port_keeps_answering(fresh_service):
    """Each old process stops only once its replacement serves, and finishes its calls in flight.
    A call that reaches an old process after its graceful stop began, before the client has read
    the GOAWAY, is cancelled by gRPC's server: at most one per client per process replaced."""
    server = fresh_service
    with Load(server.grpc) as load:
        before = set(server.grpc_processes())
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for(lambda: not before & set(server.grpc_processes()) and len(server.grpc_processes()) == 2)
        counted = list(load.answers)
        wait_for(lambda: all(now > then for now, then in zip(load.answers, counted, strict=True)))
    assert all(len(failed) <= len(before) for failed in load.failures), load.failures
    assert all(text.split()[0] in ("StatusCode.CANCELLED", "StatusCode.UNAVAILABLE")
               for failed in load.failures for _, text in failed), load.failures


def test_sigterm_stops_the_grpc_processes_gracefully(fresh_service):
    server = fresh_service
    processes = server.grpc_processes()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=40) == 0
    time.sleep(0.5)
    assert not [pid for pid in processes if os.path.exists(f"/proc/{pid}")]



def test_the_launcher_refuses_a_grpc_port_already_in_use():
    """SO_REUSEPORT would otherwise let a second service share the port silently."""
    import socket
    import subprocess
    import sys

    from tests.conftest import ROOT, free_port

    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {**os.environ, "SERVING_GRPC_BIND": f"127.0.0.1:{port}",
               "SERVING_BIND": f"127.0.0.1:{free_port()}"}
        done = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "SERVING_GRPC_BIND is not free" in done.stderr and "in use" in done.stderr


@pytest.mark.skipif(not os.environ.get("SERVING_TEST_GRPC"), reason="SERVING_TEST_GRPC (host:port) not set")
def test_tritonclient_at_a_given_address(cases):
    """make container-test: the container's gRPC port (SERVING_TEST_GRPC) against the oracle."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address = os.environ["SERVING_TEST_GRPC"]
    client = triton_client(address)
    assert client.is_server_ready()
    for name, case in cases.items():
        result = triton_infer(client, name, {case.input_name: case.x.astype(np.float32)})
        got = result.as_numpy(case.output_name)
        assert np.max(np.abs(got - case.expected)) <= PARITY, name
    with grpc.insecure_channel(address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_sighup_makes_the_grpc_processes_load_a_new_version(tmp_path):
    """The same reload as REST's: a version added to the repository is served after SIGHUP."""
    import json

    for name in MODEL_NAMES:
        shutil.copytree(latest_version(name), tmp_path / name / "1")
    with front_door(tmp_path, workers=1) as server:
        client = triton_client(server.grpc)
        assert list(client.get_model_metadata("demand").versions) == ["1"]
        shutil.copytree(tmp_path / "demand" / "1", tmp_path / "demand" / ".staging-2")
        card = tmp_path / "demand" / ".staging-2" / "card.json"
        card.write_text(json.dumps({**json.loads(card.read_text()), "version": 2}))
        (tmp_path / "demand" / ".staging-2").rename(tmp_path / "demand" / "2")
        os.kill(server.process.pid, signal.SIGHUP)

        def served_version() -> str:
            from tritonclient.utils import InferenceServerException

            try:
                result = triton_infer(client, "demand", {"features": np.array([ROW], np.float32)})
            except InferenceServerException:  # a call cancelled by the reload is tried again
                return ""
            return result.get_response().model_version

        wait_for(lambda: served_version() == "2")
        assert list(client.get_model_metadata("demand").versions) == ["1", "2"]
