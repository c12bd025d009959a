"""What a real gunicorn serves equals the NumPy forward propagation, on every model's whole test
split, through v2 JSON, v2 binary, TF Serving :predict, and tritonclient as a real client.

SERVING_TEST_URL points these tests at an already running service (a container, say)."""

from __future__ import annotations

import json
import urllib.request
from urllib.parse import urlparse

import numpy as np
import pytest

from modelcard import forward
from tests.conftest import MODEL_NAMES, PARITY, latest_version, read_card

HEADER_LENGTH = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def splits():
    """name -> (card, test inputs, the oracle's outputs)."""
    from training import data

    result = {}
    for name in MODEL_NAMES:
        model_dir = latest_version(name)
        x = data.load(name).test.x
        result[name] = (read_card(model_dir), x, forward.Network.load(model_dir).predict(x))
    return result


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[dict, bytes]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(response.headers), response.read()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_v2_json(server, splits, name):
    card, x, expected = splits[name]
    (tensor,), (output,) = card["inputs"], card["outputs"]
    body = json.dumps({"id": f"parity-{name}", "inputs": [
        {"name": tensor["name"], "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]})
    _, reply = post(f"{server}/v2/models/{name}/infer", body.encode())
    answer = json.loads(reply)
    assert answer["id"] == f"parity-{name}" and answer["model_name"] == name
    (out,) = answer["outputs"]
    assert out["name"] == output["name"] and out["shape"] == list(expected.shape)
    served = np.array(out["data"]).reshape(out["shape"])
    assert np.max(np.abs(served - expected)) <= PARITY


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_v2_binary(server, splits, name):
    card, x, expected = splits[name]
    blob = x.astype("<f4").tobytes()
    header = json.dumps({
        "inputs": [{"name": card["inputs"][0]["name"], "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    headers, reply = post(f"{server}/v2/models/{name}/infer", header + blob,
                          {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"})
    length = int(headers[HEADER_LENGTH])
    (out,) = json.loads(reply[:length])["outputs"]
    assert out["parameters"]["binary_data_size"] == len(reply) - length
    served = np.frombuffer(reply[length:], dtype="<f4").reshape(out["shape"])
    assert np.max(np.abs(served - expected)) <= PARITY


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_tfserving_predict(server, splits, name):
    card, x, expected = splits[name]
    _, reply = post(f"{server}/v1/models/{name}:predict", json.dumps({"instances": x.tolist()}).encode())
    predictions = json.loads(reply)["predictions"]
    served = np.array([p[card["outputs"][0]["name"]] for p in predictions])
    assert np.max(np.abs(served - expected)) <= PARITY


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_tritonclient(server, splits, name, binary):
    import tritonclient.http as triton

    card, x, expected = splits[name]
    client = triton.InferenceServerClient(url=urlparse(server).netloc)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(name)
        metadata = client.get_model_metadata(name)
        assert metadata["platform"] == "onnx_onnxv1" and metadata["inputs"][0]["shape"] == [-1, x.shape[1]]
        tensor = triton.InferInput(card["inputs"][0]["name"], list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        output_name = card["outputs"][0]["name"]
        wanted = [triton.InferRequestedOutput(output_name, binary_data=binary)]
        result = client.infer(name, [tensor], outputs=wanted, request_id="triton-1")
        served = result.as_numpy(output_name)
        assert result.get_response()["id"] == "triton-1"
        assert np.max(np.abs(served - expected)) <= PARITY
        # With no outputs named, tritonclient asks for every output in binary.
        assert np.max(np.abs(client.infer(name, [tensor]).as_numpy(output_name) - expected)) <= PARITY
    finally:
        client.close()


def test_tritonclient_sees_errors(server):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=urlparse(server).netloc)
    try:
        tensor = triton.InferInput("pixels", [1, 63], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 63), dtype=np.float32))
        with pytest.raises(InferenceServerException, match="does not match the model"):
            client.infer("digits", [tensor])
        with pytest.raises(InferenceServerException, match="not found"):
            client.get_model_metadata("no-such-model")
    finally:
        client.close()
