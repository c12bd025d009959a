"""The classification extension (service/core/classification.py): outputs asked for with
`"classification": k` come back as their top k classes, "<value>:<index>:<label>" BYTES strings.

The oracles are independent of the service: for `digits`, the NumPy forward propagation; for the
`scores` and `fixed` models (identity graphs built here), the request itself. Expected strings are
made by Python's sorted() and %-formatting (C++'s std::to_string writes floats as "%f"). First the
codecs and the data plane without a server, then a real service (nginx, gunicorn and the gRPC
processes: tests.conftest.front_door) answering tritonclient.http (JSON and binary) and
tritonclient.grpc (raw) and typed gRPC contents, and every refusal followed by a good answer.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import urllib.error
import urllib.request

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from modelcard import forward
from service.core.dataplane import DataPlane
from service.core.errors import BadRequest
from service.grpc import codec as grpc_codec
from service.repository.registry import ModelRegistry
from service.rest.codecs import v2 as v2_codec
from service.settings import Settings
from service.stubs import messages
from tests.conftest import PARITY, front_door, latest_version
from tests.onnx_models import OPSET, write_version

DIGITS = "digits"
LETTERS = ("a", "b", "c", "d")
ROWS = 6  # rows of the digits test split sent
STRING = re.compile(r"(-?[0-9]+(?:\.[0-9]{6})?):([0-9]+):(.*)", re.DOTALL)
# Rows with ties, negatives and a zero for the integer `scores` model.
TIED = np.array([[3, 7, 3, 7], [-1, 0, 5, 2], [4, 4, 4, 4]], dtype=np.int32)


# --- the oracle's strings -----------------------------------------------------------------------

def expected_strings(values: np.ndarray, k: int, labels) -> list[list[str]]:
    """Each row's top k as Triton writes them: highest value first, the lower index on ties."""
    rows = values.reshape(-1, values.shape[-1])
    number = "%f" if values.dtype.kind == "f" else "%d"
    answer = []
    for row in rows:
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
        answer.append([f"{number % row[i]}:{i}:{labels[i]}" for i in order])
    return answer


def as_text(values) -> list[list[str]]:
    """A BYTES answer (str or bytes elements) as rows of Python strings."""
    array = np.asarray(values, dtype=object)
    rows = array.reshape(-1, array.shape[-1]) if array.ndim else array
    return [[item.decode() if isinstance(item, bytes) else item for item in row] for row in rows]


def check_against_oracle(got: list[list[str]], expected: np.ndarray, k: int, labels) -> None:
    """Served top-k strings against the NumPy forward propagation's probabilities: format, label,
    value within PARITY (plus the 6th decimal's rounding), descending, and the k highest classes
    (up to PARITY: classes the oracle cannot tell apart may trade places)."""
    assert len(got) == len(expected)
    for row, strings in zip(expected, got, strict=True):
        assert len(strings) == min(k, len(row))
        parsed = [STRING.fullmatch(text) for text in strings]
        assert all(parsed), strings
        values = [float(match[1]) for match in parsed]
        indices = [int(match[2]) for match in parsed]
        assert [match[3] for match in parsed] == [labels[i] for i in indices]
        assert len(set(indices)) == len(indices)
        assert all(abs(value - row[i]) <= PARITY + 5e-7 for value, i in zip(values, indices, strict=True))
        assert values == sorted(values, reverse=True)
        left_out = [row[i] for i in range(len(row)) if i not in indices]
        if left_out:
            assert min(row[indices]) >= max(left_out) - 2 * PARITY


# --- the models -----------------------------------------------------------------------------------

def scores_model() -> onnx.ModelProto:
    """x INT32 [-1, 4] -> `classes` INT32 (x, labelled a..d), `half` FP16 (x, labelled),
    `unlabelled` FP32 (x, no labels) and `flag` BOOL (x > 0, labelled)."""
    zero = onnx.numpy_helper.from_array(np.array(0, dtype=np.int32), "zero")
    nodes = [helper.make_node("Identity", ["x"], ["classes"]),
             helper.make_node("Cast", ["x"], ["half"], to=TensorProto.FLOAT16),
             helper.make_node("Cast", ["x"], ["unlabelled"], to=TensorProto.FLOAT),
             helper.make_node("Greater", ["x", "zero"], ["flag"])]
    outputs = [helper.make_tensor_value_info(name, kind, ["batch", 4]) for name, kind in (
        ("classes", TensorProto.INT32), ("half", TensorProto.FLOAT16),
        ("unlabelled", TensorProto.FLOAT), ("flag", TensorProto.BOOL))]
    x = helper.make_tensor_value_info("x", TensorProto.INT32, ["batch", 4])
    graph = helper.make_graph(nodes, "scores", [x], outputs, initializer=[zero])
    return _model(graph)


def fixed_model() -> onnx.ModelProto:
    """v FP64 [4] -> w FP64 [4], labelled: an output with no batch dimension."""
    graph = helper.make_graph([helper.make_node("Identity", ["v"], ["w"])], "fixed",
                              [helper.make_tensor_value_info("v", TensorProto.DOUBLE, [4])],
                              [helper.make_tensor_value_info("w", TensorProto.DOUBLE, [4])])
    return _model(graph)


def _model(graph) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("classification-models")
    for name in (DIGITS, "digits-binary"):
        shutil.copytree(latest_version(name), root / name / latest_version(name).name)
    write_version(root, "scores", 1, scores_model(),
                  labels={"classes": LETTERS, "half": LETTERS, "flag": LETTERS})
    write_version(root, "fixed", 1, fixed_model(), labels={"w": ("north", "east", "south", "west")})
    return root


@pytest.fixture(scope="module")
def digits():
    """The first rows of digits' test split, the oracle's probabilities, and the labels."""
    from training import data

    network = forward.Network.load(latest_version(DIGITS))
    x = data.load(DIGITS).test.x[:ROWS].astype(np.float32)
    return x, network.predict(x), tuple(network.card["outputs"][0]["labels"])


# --- without a server: the v2 and gRPC codecs over the data plane --------------------------------

@pytest.fixture(scope="module")
def plane(repository):
    registry = ModelRegistry(repository).load()
    assert registry.ready, registry.unservable()
    return DataPlane(registry, Settings(max_batch=16))


def classified(output: str, count) -> dict:
    return {"name": output, "parameters": {"classification": count}}


def v2_body(model_input: dict, outputs: list, **parameters) -> bytes:
    return json.dumps({"inputs": [model_input], "outputs": outputs, "parameters": parameters}).encode()


def v2_round_trip(plane, model: str, body: bytes) -> tuple[dict, bytes]:
    request = v2_codec.decode_request(body)
    response = plane.infer(plane.model(model), request)
    payload, length = v2_codec.encode_response(response, v2_codec.binary_outputs(request, response.outputs))
    return (json.loads(payload), b"") if length is None else (json.loads(payload[:length]), payload[length:])


def length_prefixed(blob: bytes) -> list[str]:
    """Triton's binary BYTES layout, read independently: 4-byte little-endian length, bytes."""
    items, offset = [], 0
    while offset < len(blob):
        (size,) = struct.unpack_from("<I", blob, offset)
        items.append(blob[offset + 4:offset + 4 + size].decode())
        offset += 4 + size
    return items


def test_v2_codec_json_and_binary_with_ties_and_integers(plane):
    tensor = {"name": "x", "datatype": "INT32", "shape": list(TIED.shape), "data": TIED.ravel().tolist()}
    document, _ = v2_round_trip(plane, "scores", v2_body(tensor, [
        classified("classes", 3), {"name": "unlabelled"}]))
    classes, unlabelled = document["outputs"]
    assert classes == {"name": "classes", "datatype": "BYTES", "shape": [3, 3],
                       "data": [s for row in expected_strings(TIED, 3, LETTERS) for s in row]}
    assert classes["data"][:3] == ["7:1:b", "7:3:d", "3:0:a"]  # ties: the lower index first
    assert unlabelled["datatype"] == "FP32" and unlabelled["data"] == TIED.ravel().tolist()

    document, blob = v2_round_trip(plane, "scores", v2_body(tensor, [
        classified("half", 9)], binary_data_output=True))
    (half,) = document["outputs"]
    assert half["datatype"] == "BYTES" and half["shape"] == [3, 4]  # k clamped to the 4 classes
    assert half["parameters"]["binary_data_size"] == len(blob)
    assert length_prefixed(blob) == [s for row in expected_strings(TIED.astype(np.float16), 4, LETTERS)
                                     for s in row]
    assert length_prefixed(blob)[:2] == ["7.000000:1:b", "7.000000:3:d"]


def test_v2_codec_an_output_without_a_batch_dimension(plane):
    v = np.array([0.25, -1.5, 0.953125, 0.25])
    tensor = {"name": "v", "datatype": "FP64", "shape": [4], "data": v.tolist()}
    document, _ = v2_round_trip(plane, "fixed", v2_body(tensor, [classified("w", 2)]))
    assert document["outputs"] == [{"name": "w", "datatype": "BYTES", "shape": [2],
                                    "data": ["0.953125:2:south", "0.250000:0:north"]}]


def test_grpc_codec_typed_and_raw(plane):
    def request(raw: bool, count):
        message = messages.ModelInferRequest(model_name="scores")
        tensor = message.inputs.add(name="x", datatype="INT32", shape=TIED.shape)
        if raw:
            message.raw_input_contents.append(TIED.astype("<i4").tobytes())
        else:
            tensor.contents.int_contents.extend(TIED.ravel().tolist())
        output = message.outputs.add(name="classes")
        output.parameters["classification"].int64_param = count
        return message

    expected = [s.encode() for row in expected_strings(TIED, 2, LETTERS) for s in row]
    for raw in (False, True):
        message = request(raw, 2)
        response = plane.infer(plane.model("scores"), grpc_codec.decode_request(message))
        answer = messages.ModelInferResponse.FromString(grpc_codec.encode_response(
            response, grpc_codec.raw_outputs(message, response)).SerializeToString())
        (tensor,) = answer.outputs
        assert (tensor.datatype, list(tensor.shape)) == ("BYTES", [3, 2])
        if raw:
            assert [s.encode() for s in length_prefixed(answer.raw_output_contents[0])] == expected
        else:
            assert list(tensor.contents.bytes_contents) == expected


@pytest.mark.parametrize("model, output, count, message", [
    ("scores", "classes", 0, "must be a positive integer (how many classes to return), got 0"),
    ("scores", "classes", -1, "got -1"),
    ("scores", "classes", "3", "got a string"),
    ("scores", "classes", True, "got the boolean true"),
    ("scores", "classes", 2.0, "got 2.0"),
    ("scores", "classes", None, "got null"),
    ("scores", "unlabelled", 1, "classification needs class labels, and the card of model 'scores' "
                                "has none for this output"),
    ("scores", "flag", 1, "classification ranks numbers, and this output gives BOOL"),
    ("digits-binary", "probability", 1, "one probability per row (of '1' against '0')"),
])
def test_data_plane_refusals_name_the_output(plane, model, output, count, message):
    values = np.zeros((1, 64) if model == "digits-binary" else (1, 4))
    tensor = ({"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": values.ravel().tolist()}
              if model == "digits-binary" else
              {"name": "x", "datatype": "INT32", "shape": [1, 4], "data": [0, 1, 2, 3]})
    with pytest.raises(BadRequest) as refused:
        v2_round_trip(plane, model, v2_body(tensor, [classified(output, count)]))
    assert f"outputs[0] {output!r}: " in str(refused.value) and message in str(refused.value)


# --- a real service: nginx, gunicorn, the gRPC processes ------------------------------------------

@pytest.fixture(scope="module")
def served(repository):
    with front_door(repository, workers=2) as running:
        yield running


def http_client(served):
    import tritonclient.http as triton

    return triton.InferenceServerClient(served.url.removeprefix("http://"))


def http_classes(served, x: np.ndarray, k: int, binary: bool) -> list[list[str]]:
    import tritonclient.http as triton

    tensor = triton.InferInput("pixels", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = [triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=k)]
    result = http_client(served).infer(DIGITS, [tensor], outputs=wanted)
    output = result.get_output("probabilities")
    assert output["datatype"] == "BYTES" and output["shape"] == [len(x), min(k, 10)]
    return as_text(result.as_numpy("probabilities"))


def grpc_classes(served, x: np.ndarray, k: int) -> list[list[str]]:
    import tritonclient.grpc as triton

    tensor = triton.InferInput("pixels", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    client = triton.InferenceServerClient(served.grpc)
    wanted = [triton.InferRequestedOutput("probabilities", class_count=k)]
    result = client.infer(DIGITS, [tensor], outputs=wanted)
    output = result.get_output("probabilities")
    assert output.datatype == "BYTES" and list(output.shape) == [len(x), min(k, 10)]
    return as_text(result.as_numpy("probabilities"))


def served_probabilities(served, x: np.ndarray) -> np.ndarray:
    """The plain output, for the exact strings (the classification code plays no part in it)."""
    import tritonclient.http as triton

    tensor = triton.InferInput("pixels", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return http_client(served).infer(DIGITS, [tensor]).as_numpy("probabilities")


@pytest.mark.parametrize("k", [1, 3, 10, 15])
def test_digits_top_k_over_rest_json_rest_binary_and_grpc(served, digits, k):
    x, expected, labels = digits
    exact = expected_strings(served_probabilities(served, x), k, labels)
    for transport, got in (("json", http_classes(served, x, k, binary=False)),
                           ("binary", http_classes(served, x, k, binary=True)),
                           ("grpc", grpc_classes(served, x, k))):
        check_against_oracle(got, expected, k, labels)
        assert got == exact, transport


def test_server_metadata_lists_the_extension(served):
    with urllib.request.urlopen(f"{served.url}/v2", timeout=30) as reply:
        assert "classification" in json.load(reply)["extensions"]
    import tritonclient.grpc as triton

    assert "classification" in triton.InferenceServerClient(served.grpc).get_server_metadata().extensions


def post(url: str, document: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(document).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_refusals_over_rest_and_grpc_and_the_next_answer_is_right(served, digits):
    import tritonclient.grpc as triton_grpc

    x, expected, labels = digits
    pixels = {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": x[0].tolist()}
    ints = {"name": "x", "datatype": "INT32", "shape": [1, 4], "data": [0, 1, 2, 3]}
    refused = [
        ("scores", ints, "unlabelled", 2, "has none for this output"),
        ("scores", ints, "flag", 2, "this output gives BOOL"),
        ("digits-binary", pixels, "probability", 1, "one probability per row"),
        (DIGITS, pixels, "probabilities", 0, "must be a positive integer"),
        (DIGITS, pixels, "probabilities", -1, "must be a positive integer"),
        (DIGITS, pixels, "probabilities", "3", "got a string"),
        (DIGITS, pixels, "probabilities", True, "got the boolean true"),
        (DIGITS, pixels, "classes", 3, "unknown output 'classes'"),
    ]
    good = {"inputs": [pixels], "outputs": [classified("probabilities", 2)]}
    problems = []
    for model, tensor, output, count, message in refused:
        status, answer = post(f"{served.url}/v2/models/{model}/infer",
                              {"inputs": [tensor], "outputs": [classified(output, count)]})
        if status != 400 or message not in answer.get("error", ""):
            problems.append(f"{model} {output} {count!r}: {status} {answer}")
        status, answer = post(f"{served.url}/v2/models/{DIGITS}/infer", good)
        assert status == 200, answer
        check_against_oracle(as_text([answer["outputs"][0]["data"]]), expected[:1], 2, labels)
    assert not problems, "\n".join(problems)

    # gRPC: the parameter as a string_param, and on an output without labels.
    with grpc.insecure_channel(served.grpc) as channel:
        from tritonclient.grpc import service_pb2_grpc

        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for output, parameter, value, message in (("classes", "string_param", "3", "got a string"),
                                                  ("unlabelled", "int64_param", 2, "has none")):
            request = triton_grpc.service_pb2.ModelInferRequest(model_name="scores")
            tensor = request.inputs.add(name="x", datatype="INT32", shape=[1, 4])
            tensor.contents.int_contents.extend([0, 1, 2, 3])
            setattr(request.outputs.add(name=output).parameters["classification"], parameter, value)
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelInfer(request, timeout=30)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in error.value.details()
    check_against_oracle(grpc_classes(served, x, 3), expected, 3, labels)
    assert "Traceback" not in served.log_text()
