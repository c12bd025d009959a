"""The Open Inference Protocol v2 over the Flask test client.

Every expected number comes from the NumPy forward propagation of the model's weights, run on
a slice of the model's test split; nothing is copied from the service's own answers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import MODEL_NAMES, PARITY, Case, latest_version, read_card

HEADER_LENGTH = "Inference-Header-Content-Length"
DIGIT_MODELS = ("digits", "digits-binary")


def infer(client, name: str, body: dict, prefix: str = "") -> dict:
    response = client.post(f"/v2/models/{name}{prefix}/infer", json=body)
    assert response.status_code == 200, response.get_json()
    reply = response.get_json()
    assert (reply["model_name"], reply["model_version"]) == (name, "1")
    return reply


def json_output(reply: dict, name: str) -> np.ndarray:
    [tensor] = [t for t in reply["outputs"] if t["name"] == name]
    assert tensor["datatype"] == "FP32"
    return np.array(tensor["data"], dtype=np.float64).reshape(tensor["shape"])


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert np.max(np.abs(actual - expected)) <= PARITY


def binary_request(case: Case, parameters: dict) -> tuple[bytes, dict]:
    """A body of the binary tensor data extension: JSON, then the input as little-endian float32."""
    blob = case.x.astype("<f4").tobytes()
    header = json.dumps({
        "inputs": [{"name": case.input_name, "shape": list(case.x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)}}],
        "parameters": parameters,
    }).encode()
    return header + blob, {HEADER_LENGTH: str(len(header))}


def binary_outputs(response) -> dict[str, np.ndarray]:
    """Each output of a binary response, read from the raw bytes after its JSON part."""
    length = int(response.headers[HEADER_LENGTH])
    body = response.get_data()
    document, blob = json.loads(body[:length]), body[length:]
    arrays, offset = {}, 0
    for tensor in document["outputs"]:
        size = tensor["parameters"]["binary_data_size"]
        assert tensor["datatype"] == "FP32" and "data" not in tensor
        chunk = blob[offset:offset + size]
        arrays[tensor["name"]] = np.frombuffer(chunk, dtype="<f4").reshape(tensor["shape"])
        offset += size
    assert offset == len(blob)
    return arrays


def test_server_metadata(client):
    response = client.get("/v2")
    assert response.status_code == 200
    document = response.get_json()
    assert document["name"] and document["version"]
    assert "binary_tensor_data" in document["extensions"]


def test_live(client):
    response = client.get("/v2/health/live")
    assert response.status_code == 200
    assert response.get_json() == {"live": True}


def test_ready_when_every_model_is_loaded(client):
    response = client.get("/v2/health/ready")
    assert response.status_code == 200
    assert response.get_json()["ready"] is True
    for name in MODEL_NAMES:
        assert client.get(f"/v2/models/{name}/ready").status_code == 200


@pytest.mark.parametrize("prefix", ["", "/versions/1"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_metadata(client, name, prefix):
    card = read_card(latest_version(name))
    response = client.get(f"/v2/models/{name}{prefix}")
    assert response.status_code == 200
    document = response.get_json()
    assert document["name"] == name
    assert document["versions"] == ["1"]
    assert document["platform"] == "onnx_onnxv1"
    for side in ("inputs", "outputs"):
        [tensor], [declared] = document[side], card[side]
        width = declared["shape"][1]
        assert tensor == {"name": declared["name"], "datatype": "FP32", "shape": [-1, width]}


@pytest.mark.parametrize("prefix", ["", "/versions/1"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_ready(client, name, prefix):
    response = client.get(f"/v2/models/{name}{prefix}/ready")
    assert response.status_code == 200
    assert response.get_json() == {"name": name, "version": "1", "ready": True}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_infer_nested_data(client, cases, name):
    case = cases[name]
    reply = infer(client, name, {"inputs": [case.tensor(case.x.tolist())]})
    assert [t["name"] for t in reply["outputs"]] == [case.output_name]
    assert_close(json_output(reply, case.output_name), case.expected)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_infer_flat_row_major_data(client, cases, name):
    case = cases[name]
    reply = infer(client, name, {"inputs": [case.tensor(case.x.ravel(order="C").tolist())]})
    assert_close(json_output(reply, case.output_name), case.expected)


# Conversion rule under test: every model takes FP32; FP64 values are rounded to the nearest
# float32 and whole numbers sent as an integer type are converted to float32, so either
# answers exactly as FP32 data would.
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_infer_fp64_is_converted_to_float32(client, cases, name):
    case = cases[name]
    reply = infer(client, name, {"inputs": [case.tensor(case.x.astype(np.float64).tolist(), "FP64")]})
    assert_close(json_output(reply, case.output_name), case.expected)


@pytest.mark.parametrize("name", DIGIT_MODELS)
def test_infer_int32_is_converted_to_float32(client, cases, name):
    case = cases[name]
    pixels = case.x.astype(np.int32)
    assert np.array_equal(pixels, case.x)  # digit pixels are whole numbers
    reply = infer(client, name, {"inputs": [case.tensor(pixels.tolist(), "INT32")]})
    assert_close(json_output(reply, case.output_name), case.expected)


def test_infer_int32_refuses_fractions(client, cases):
    case = cases["demand"]
    body = {"inputs": [case.tensor(case.x.tolist(), "INT32")]}
    response = client.post("/v2/models/demand/infer", json=body)
    assert response.status_code == 400
    assert "INT32" in response.get_json()["error"]


def test_infer_echoes_the_id(client, cases):
    case = cases["demand"]
    reply = infer(client, "demand", {"id": "request-7", "inputs": [case.tensor(case.x.tolist())]})
    assert reply["id"] == "request-7"


def test_infer_sends_no_id_when_none_was_given(client, cases):
    case = cases["demand"]
    reply = infer(client, "demand", {"inputs": [case.tensor(case.x.tolist())]})
    assert "id" not in reply


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_infer_outputs_selected_by_name(client, cases, name):
    case = cases[name]
    body = {"inputs": [case.tensor(case.x.tolist())], "outputs": [{"name": case.output_name}]}
    reply = infer(client, name, body)
    assert [t["name"] for t in reply["outputs"]] == [case.output_name]
    assert_close(json_output(reply, case.output_name), case.expected)


def test_infer_refuses_an_unknown_output(client, cases):
    case = cases["digits"]
    body = {"inputs": [case.tensor(case.x.tolist())], "outputs": [{"name": "logits"}]}
    response = client.post("/v2/models/digits/infer", json=body)
    assert response.status_code == 400
    assert "logits" in response.get_json()["error"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_infer_at_an_explicit_version(client, cases, name):
    case = cases[name]
    reply = infer(client, name, {"inputs": [case.tensor(case.x.tolist())]}, prefix="/versions/1")
    assert_close(json_output(reply, case.output_name), case.expected)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_binary_input_and_binary_output(client, cases, name):
    case = cases[name]
    body, headers = binary_request(case, {"binary_data_output": True})
    response = client.post(f"/v2/models/{name}/infer", data=body, headers=headers,
                           content_type="application/octet-stream")
    assert response.status_code == 200, response.get_data()
    outputs = binary_outputs(response)
    assert list(outputs) == [case.output_name]
    assert_close(outputs[case.output_name].astype(np.float64), case.expected)


def test_binary_input_json_output(client, cases):
    case = cases["digits"]
    body, headers = binary_request(case, {})
    response = client.post("/v2/models/digits/infer", data=body, headers=headers,
                           content_type="application/octet-stream")
    assert response.status_code == 200, response.get_data()
    assert HEADER_LENGTH not in response.headers
    assert_close(json_output(response.get_json(), case.output_name), case.expected)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_json_input_binary_output(client, cases, name):
    case = cases[name]
    body = {"inputs": [case.tensor(case.x.tolist())],
            "outputs": [{"name": case.output_name, "parameters": {"binary_data": True}}]}
    response = client.post(f"/v2/models/{name}/infer", json=body)
    assert response.status_code == 200, response.get_data()
    outputs = binary_outputs(response)
    assert_close(outputs[case.output_name].astype(np.float64), case.expected)


def test_repository_index_lists_every_version_and_filters_the_ready_ones(client):
    everything = client.post("/v2/repository/index").get_json()
    assert {(e["name"], e["version"], e["state"]) for e in everything} == {
        (name, "1", "READY") for name in MODEL_NAMES}
    assert client.post("/v2/repository/index", json={"ready": True}).get_json() == everything
    refused = client.post("/v2/repository/index", json={"ready": "yes"})
    assert refused.status_code == 400 and "'ready'" in refused.get_json()["error"]
