"""Imported Keras models of several kinds, served by a real gunicorn: every protocol's answer
equals Keras' own `predict` on the same inputs, within the tolerance the card was published at.

The models are built, saved and imported with the real command by the `imported` fixture
(tests/imported.py); the oracle is Keras, run in this test session."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from tests.conftest import front_door, gunicorn, read_card

DATATYPE_OF = {np.dtype(t): name for name, t in (
    ("BOOL", np.bool_), ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32),
    ("UINT64", np.uint64), ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32),
    ("INT64", np.int64), ("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64))}


@pytest.fixture(scope="module")
def served(imported):
    (repository,) = {model.path.parent.parent for model in imported.values()}
    with gunicorn(repository, workers=2) as running:
        yield running.url


@pytest.fixture(scope="module")
def served_grpc(imported):
    """The gRPC address of the imported repository served as `make serve` runs it."""
    (repository,) = {model.path.parent.parent for model in imported.values()}
    with front_door(repository, workers=1) as running:
        yield running.grpc


def tolerance(model) -> float:
    parity = read_card(model.path)["parity"]
    # A plain ONNX import has no Keras reference in its card; the test holds it to the import default.
    return parity.get("tolerance") or 1e-4


def assert_close(served: dict, model) -> None:
    assert set(served) == set(model.outputs), (set(served), set(model.outputs))
    for name, expected in model.outputs.items():
        got = np.asarray(served[name], dtype=np.float64).reshape(expected.shape)
        assert np.max(np.abs(got - expected)) <= tolerance(model), name


MODEL_IDS = ["convolutional", "recurrent", "two-headed", "dense-stack", "two-headed-h5",
             "recurrent-savedmodel", "convolutional-onnx", "transformer"]


def v2_body(model, outputs=None) -> dict:
    body = {"id": "imported", "inputs": [
        {"name": name, "shape": list(values.shape), "datatype": DATATYPE_OF[values.dtype],
         "data": values.tolist()} for name, values in model.inputs.items()]}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


@pytest.mark.parametrize("name", MODEL_IDS)
def test_v2_json_equals_keras(served, imported, name):
    model = imported[name]
    reply = requests.post(f"{served}/v2/models/{name}/infer", json=v2_body(model), timeout=60)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["id"] == "imported" and answer["model_name"] == name
    assert_close({t["name"]: t["data"] for t in answer["outputs"]}, model)
    for tensor in answer["outputs"]:
        assert tensor["shape"] == list(model.outputs[tensor["name"]].shape)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("name", MODEL_IDS)
def test_tritonclient_equals_keras(served, imported, name, binary):
    import tritonclient.http as triton

    model = imported[name]
    client = triton.InferenceServerClient(served.removeprefix("http://"), network_timeout=60)
    tensors = []
    for input_name, values in model.inputs.items():
        tensor = triton.InferInput(input_name, list(values.shape), DATATYPE_OF[values.dtype])
        tensor.set_data_from_numpy(values, binary_data=binary)
        tensors.append(tensor)
    wanted = [triton.InferRequestedOutput(output, binary_data=binary) for output in model.outputs]
    result = client.infer(name, tensors, outputs=wanted)
    assert_close({output: result.as_numpy(output) for output in model.outputs}, model)


@pytest.mark.parametrize("name", MODEL_IDS)
def test_tfserving_rows_and_columns_equal_keras(served, imported, name):
    model = imported[name]
    rows = len(next(iter(model.inputs.values())))
    instances = [{key: values[row].tolist() for key, values in model.inputs.items()} for row in range(rows)]
    reply = requests.post(f"{served}/v1/models/{name}:predict", json={"instances": instances}, timeout=60)
    assert reply.status_code == 200, reply.text
    predictions = reply.json()["predictions"]
    if len(model.outputs) == 1 and not isinstance(predictions[0], dict):  # TF Serving's bare values
        (output,) = model.outputs
        assert_close({output: predictions}, model)
    else:
        assert_close({output: [p[output] for p in predictions] for output in model.outputs}, model)

    columns = {key: values.tolist() for key, values in model.inputs.items()}
    reply = requests.post(f"{served}/v1/models/{name}:predict", json={"inputs": columns}, timeout=60)
    assert reply.status_code == 200, reply.text
    outputs = reply.json()["outputs"]
    if not isinstance(outputs, dict):
        (output,) = model.outputs
        outputs = {output: outputs}
    assert_close({output: outputs[output] for output in model.outputs}, model)


def test_outputs_select_one_head(served, imported):
    model = imported["two-headed"]
    reply = requests.post(f"{served}/v2/models/two-headed/infer", json=v2_body(model, ["plan"]), timeout=60)
    (tensor,) = reply.json()["outputs"]
    assert tensor["name"] == "plan"
    got = np.array(tensor["data"]).reshape(tensor["shape"])
    assert np.max(np.abs(got - model.outputs["plan"])) <= tolerance(model)


def test_labels_come_with_the_predictions(served, imported):
    model = imported["two-headed"]
    instances = [{key: values[row].tolist() for key, values in model.inputs.items()}
                 for row in range(len(model.inputs["numbers"]))]
    reply = requests.post(f"{served}/v1/models/two-headed:predict", json={"instances": instances}, timeout=60)
    for row, prediction in enumerate(reply.json()["predictions"]):
        plan = model.outputs["plan"][row]
        assert prediction["plan_label"] == ("basic", "plus", "pro")[int(np.argmax(plan))]
        assert prediction["churn_label"] == ("leaves" if model.outputs["churn"][row, 0] >= 0.5 else "stays")


@pytest.mark.parametrize("name", MODEL_IDS)
def test_metadata_shows_the_real_signature(served, imported, name):
    card = read_card(imported[name].path)
    v2 = requests.get(f"{served}/v2/models/{name}", timeout=30).json()
    for side in ("inputs", "outputs"):
        assert v2[side] == [{key: t[key] for key in ("name", "datatype", "shape")} for t in card[side]]
    assert v2["parameters"]["explain"] == ("forward" in card)
    tf = requests.get(f"{served}/v1/models/{name}/metadata", timeout=30).json()
    signature = tf["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert list(signature["inputs"]) == [t["name"] for t in card["inputs"]]
    assert list(signature["outputs"]) == [t["name"] for t in card["outputs"]]
    for tensor in card["inputs"]:
        dims = signature["inputs"][tensor["name"]]["tensor_shape"]["dim"]
        assert [int(d["size"]) for d in dims] == tensor["shape"]
        assert tensor["shape"][0] == -1  # the batch dimension stays dynamic


def test_explain_for_the_dense_stack_equals_keras(served, imported):
    model = imported["dense-stack"]
    x = model.inputs["measurements"]
    reply = requests.post(f"{served}/v1/models/dense-stack:explain", json={"instances": x.tolist()},
                          timeout=60)
    assert reply.status_code == 200, reply.text
    explanations = reply.json()["explanations"]
    last = np.array([e["activations"][f"a{len(e['activations'])}"] for e in explanations])
    assert np.max(np.abs(last - model.outputs["species"])) <= tolerance(model)


@pytest.mark.parametrize("name", ["convolutional", "two-headed"])
def test_explain_elsewhere_is_a_clear_4xx(served, imported, name):
    model = imported[name]
    instances = [{key: values[0].tolist() for key, values in model.inputs.items()}]
    reply = requests.post(f"{served}/v1/models/{name}:explain", json={"instances": instances}, timeout=60)
    assert reply.status_code == 400
    assert "forward" in reply.json()["error"]


def test_an_embedding_index_out_of_range_is_a_400_and_the_next_answer_is_right(served, imported):
    model = imported["two-headed"]
    body = v2_body(model)
    tokens = next(t for t in body["inputs"] if t["name"] == "tokens")
    tokens["data"] = [[10**6] * len(row) for row in tokens["data"]]
    reply = requests.post(f"{served}/v2/models/two-headed/infer", json=body, timeout=60)
    assert reply.status_code == 400 and "range" in reply.json()["error"], reply.text
    reply = requests.post(f"{served}/v2/models/two-headed/infer", json=v2_body(model), timeout=60)
    assert_close({t["name"]: t["data"] for t in reply.json()["outputs"]}, model)


def test_every_imported_model_is_ready(served, imported):
    index = requests.post(f"{served}/v2/repository/index", data=json.dumps({}), timeout=30).json()
    assert {(entry["name"], entry["state"]) for entry in index} == {(name, "READY") for name in imported}


@pytest.mark.parametrize("name", MODEL_IDS)
def test_grpc_raw_and_typed_equal_keras(served_grpc, imported, name):
    """tritonclient.grpc (raw tensors) and typed contents (tritonclient's own messages)."""
    import grpc
    import tritonclient.grpc as triton
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from tests.test_grpc import answer_arrays, typed_request

    model = imported[name]
    client = triton.InferenceServerClient(served_grpc)
    tensors = []
    for input_name, values in model.inputs.items():
        tensor = triton.InferInput(input_name, list(values.shape), DATATYPE_OF[values.dtype])
        tensors.append(tensor.set_data_from_numpy(values))
    result = client.infer(name, tensors)
    assert_close({output: result.as_numpy(output) for output in model.outputs}, model)
    metadata = client.get_model_metadata(name)
    card = read_card(model.path)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in card["inputs"]]
    if any(values.dtype == np.float16 for values in model.inputs.values()):
        return  # FP16 travels raw only
    with grpc.insecure_channel(served_grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(typed_request(service_pb2, name, model.inputs), timeout=60)
    assert_close(answer_arrays(answer), model)
