"""Every v2 datatype, many inputs and outputs, through the codecs and the data plane without HTTP,
then through a real gunicorn with tritonclient (binary on and off) and TF Serving rows and columns.

The model is tests/echo_model.py: each output is its input, so the right answer is the request."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelcard.card import ModelCard
from modelcard.tables import DATATYPE_OF, DATATYPES
from service.core.dataplane import DataPlane
from service.core.errors import BadRequest, PayloadTooLarge
from service.core.types import InferenceRequest, RequestedOutput
from service.repository.registry import ModelRegistry
from service.rest.codecs import tfserving as tf_codec
from service.rest.codecs import v2 as v2_codec
from service.settings import Settings
from tests.conftest import gunicorn
from tests.echo_model import DTYPES, NAME, TOKEN_RANGE, sample, write_echo_model


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("echo-models")
    write_echo_model(root)
    return root


@pytest.fixture(scope="module")
def plane(repository):
    registry = ModelRegistry(repository).load()
    assert registry.ready, registry.unservable()
    return DataPlane(registry, Settings(max_batch=8))


def outputs_for(inputs: dict) -> dict:
    return {("token_out" if name == "token" else "y_" + name[2:]): values for name, values in inputs.items()}


def assert_same(answer: dict, expected: dict) -> None:
    assert list(answer) == list(expected)
    for name, values in expected.items():
        assert answer[name].dtype == values.dtype, name
        np.testing.assert_array_equal(answer[name], values, err_msg=name)


# --- the data plane -----------------------------------------------------------------------------

def test_card_parses_every_datatype(plane):
    card = plane.model(NAME).card
    assert {spec.datatype for spec in card.inputs} == set(DATATYPES)
    assert card.input("token").range == TOKEN_RANGE
    assert card.forward is None and plane.model(NAME).network is None


def test_every_datatype_round_trips_through_the_data_plane(plane):
    inputs = sample(rows=3)
    response = plane.infer(plane.model(NAME), InferenceRequest(dict(inputs)))
    assert_same(response.outputs, outputs_for(inputs))


def test_outputs_select_a_subset_in_the_order_asked(plane):
    inputs = sample()
    wanted = [RequestedOutput("y_fp16"), RequestedOutput("token_out")]
    response = plane.infer(plane.model(NAME), InferenceRequest(dict(inputs), outputs=wanted))
    assert list(response.outputs) == ["y_fp16", "token_out"]


def test_integers_and_floats_convert_to_the_input_datatype(plane):
    inputs = sample()
    inputs["x_fp16"] = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)  # ints to a float input
    inputs["x_int8"] = np.array([[1.0, -2.0, 3.0], [4.0, 5.0, 127.0]])  # whole floats to ints
    response = plane.infer(plane.model(NAME), InferenceRequest(inputs))
    np.testing.assert_array_equal(response.outputs["y_fp16"], [[1, 2, 3], [4, 5, 6]])
    assert response.outputs["y_int8"].dtype == np.int8 and response.outputs["y_int8"][1, 2] == 127


@pytest.mark.parametrize(("name", "values", "message"), [
    ("x_int8", [[128, 0, 0]], "range of INT8"),
    ("x_uint8", [[-1, 0, 0]], "range of UINT8"),
    ("x_uint16", [[1.5, 0, 0]], "whole numbers"),
    ("x_fp16", [[70000.0, 0, 0]], "beyond the FP16 range"),
    ("x_fp32", [[np.nan, 0, 0]], "NaN"),
    ("x_bool", [[1, 0, 1]], "takes BOOL"),
    ("x_fp64", [[True, False, True]], "booleans are not numbers"),
    ("token", [[0, 100]], "range [0, 99]"),
    ("x_int32", [[1, 2]], "does not match the model's [-1, 3]"),
    ("x_int32", [[[1, 2, 3]]], "does not match"),
])
def test_values_the_input_cannot_take_are_refused(plane, name, values, message):
    inputs = sample(rows=1)
    inputs[name] = np.array(values)
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        plane.infer(plane.model(NAME), InferenceRequest(inputs))


def test_inputs_missing_unknown_or_disagreeing_on_the_batch(plane):
    model = plane.model(NAME)
    inputs = sample(rows=2)
    with pytest.raises(BadRequest, match="missing input 'token'"):
        plane.infer(model, InferenceRequest({k: v for k, v in inputs.items() if k != "token"}))
    with pytest.raises(BadRequest, match="unknown input"):
        plane.infer(model, InferenceRequest({**inputs, "extra": np.zeros((2, 3))}))
    with pytest.raises(BadRequest, match="batch size"):
        plane.infer(model, InferenceRequest({**inputs, "token": np.zeros((3, 2), dtype=np.int64)}))
    with pytest.raises(BadRequest, match="unknown output"):
        plane.infer(model, InferenceRequest(inputs, outputs=[RequestedOutput("nope")]))
    with pytest.raises(PayloadTooLarge, match="limit of 8"):
        plane.infer(model, InferenceRequest(sample(rows=9)))
    with pytest.raises(BadRequest, match="explain"):
        plane.explain(model, InferenceRequest(inputs))


# --- the codecs, without HTTP -------------------------------------------------------------------

def v2_json_body(inputs: dict, **document) -> bytes:
    return json.dumps({"inputs": [
        {"name": name, "datatype": DATATYPE_OF[values.dtype], "shape": list(values.shape),
         "data": values.tolist()} for name, values in inputs.items()], **document}).encode()


def test_v2_json_codec_decodes_every_datatype_exactly():
    inputs = sample()
    request = v2_codec.decode_request(v2_json_body(inputs, id="x"))
    assert request.id == "x"
    assert_same(request.inputs, inputs)


def test_v2_binary_codec_decodes_and_encodes_raw_tensors(plane):
    inputs = sample()
    header = json.dumps({"inputs": [
        {"name": name, "datatype": DATATYPE_OF[values.dtype], "shape": list(values.shape),
         "parameters": {"binary_data_size": values.nbytes}} for name, values in inputs.items()],
        "parameters": {"binary_data_output": True}}).encode()
    body = header + b"".join(values.astype(values.dtype.newbyteorder("<")).tobytes()
                             for values in inputs.values())
    request = v2_codec.decode_request(body, str(len(header)))
    assert_same(request.inputs, inputs)
    response = plane.infer(plane.model(NAME), request)
    payload, length = v2_codec.encode_response(response, v2_codec.binary_outputs(request, response.outputs))
    document, offset = json.loads(payload[:length]), length
    for tensor in document["outputs"]:
        dtype = np.dtype(DTYPES[tensor["datatype"]]).newbyteorder("<")
        size = tensor["parameters"]["binary_data_size"]
        got = np.frombuffer(payload[offset:offset + size], dtype=dtype).reshape(tensor["shape"])
        offset += size
        np.testing.assert_array_equal(got, outputs_for(inputs)[tensor["name"]])
    assert offset == len(payload)


def test_v2_json_codec_keeps_uint64_beyond_int64_exact():
    values = np.array([[2**64 - 1, 1, 0]], dtype=np.uint64)
    request = v2_codec.decode_request(v2_json_body({"x_uint64": values}))
    np.testing.assert_array_equal(request.inputs["x_uint64"], values)
    with pytest.raises(BadRequest, match="whole numbers"):
        v2_codec.decode_request(b'{"inputs": [{"name": "x_uint64", "datatype": "UINT64", '
                                b'"shape": [1, 3], "data": [18446744073709551615, 1.5, 0]}]}')


def test_tfserving_codec_reads_rows_and_columns_of_many_inputs(plane):
    card: ModelCard = plane.model(NAME).card
    inputs = sample()
    instances = [{name: values[row].tolist() for name, values in inputs.items()} for row in range(2)]
    rows, row_format = tf_codec.decode_request({"instances": instances}, card, True)
    columns, column_format = tf_codec.decode_request(
        {"inputs": {name: values.tolist() for name, values in inputs.items()}}, card, True)
    assert row_format and not column_format
    for request in (rows, columns):
        response = plane.infer(plane.model(NAME), request)
        for name, values in outputs_for(inputs).items():
            np.testing.assert_array_equal(response.outputs[name], values)
    with pytest.raises(BadRequest, match="object keyed by"):
        tf_codec.decode_request({"instances": [[1, 2, 3]]}, card, True)
    with pytest.raises(BadRequest, match="missing 'token'"):
        tf_codec.decode_request({"instances": [{k: v for k, v in instances[0].items() if k != "token"}]},
                                card, True)


# --- a real gunicorn and real clients -----------------------------------------------------------

@pytest.fixture(scope="module")
def served(repository):
    with gunicorn(repository, workers=1) as running:
        yield running.url


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_round_trips_every_datatype(served, binary):
    import tritonclient.http as triton

    inputs = sample(rows=4, seed=1)
    client = triton.InferenceServerClient(served.removeprefix("http://"))
    tensors = []
    for name, values in inputs.items():
        tensor = triton.InferInput(name, list(values.shape), DATATYPE_OF[values.dtype])
        tensor.set_data_from_numpy(values, binary_data=binary)
        tensors.append(tensor)
    wanted = [triton.InferRequestedOutput(name, binary_data=binary) for name in outputs_for(inputs)]
    result = client.infer(NAME, tensors, outputs=wanted)
    for name, values in outputs_for(inputs).items():
        got = result.as_numpy(name)
        assert got.dtype == values.dtype, name
        np.testing.assert_array_equal(got, values, err_msg=name)
    metadata = client.get_model_metadata(NAME)
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        (name, DATATYPE_OF[values.dtype], [-1, values.shape[1]]) for name, values in inputs.items()]


def test_tfserving_rows_and_columns_served(served):
    import requests

    inputs = sample(rows=3, seed=2)  # UINT64 beyond int64 included: read exactly, not as floats
    instances = [{name: values[row].tolist() for name, values in inputs.items()} for row in range(3)]
    reply = requests.post(f"{served}/v1/models/{NAME}:predict", json={"instances": instances}, timeout=30)
    assert reply.status_code == 200, reply.text
    predictions = reply.json()["predictions"]
    for name, values in outputs_for(inputs).items():
        served_values = np.array([row[name] for row in predictions], dtype=values.dtype)
        np.testing.assert_array_equal(served_values, values)
    reply = requests.post(f"{served}/v1/models/{NAME}:predict", timeout=30,
                          json={"inputs": {name: values.tolist() for name, values in inputs.items()}})
    assert reply.status_code == 200, reply.text
    for name, values in outputs_for(inputs).items():
        np.testing.assert_array_equal(np.array(reply.json()["outputs"][name], dtype=values.dtype), values)
    metadata = requests.get(f"{served}/v1/models/{NAME}/metadata", timeout=30).json()
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x_fp16"]["dtype"] == "DT_HALF"
    assert signature["outputs"]["token_out"]["tensor_shape"]["dim"][0]["size"] == "-1"
