"""The TensorFlow Serving REST API and :explain over the Flask test client.

Every expected number comes from the NumPy forward propagation of the model's weights, run on
a slice of the model's test split; labels follow the card: the class with the highest
probability, or for a binary model "labels[1] when p >= 0.5".
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.conftest import MODEL_NAMES, PARITY, Case


def call(client, name: str, body: dict, verb: str = "predict", prefix: str = "") -> dict:
    response = client.post(f"/v1/models/{name}{prefix}:{verb}", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def assert_close(actual, expected: np.ndarray) -> None:
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape
    assert np.max(np.abs(actual - expected)) <= PARITY


def assert_predictions(predictions: list[dict], case: Case) -> None:
    labels, confidence = case.labels()
    assert len(predictions) == len(case.x)
    for row, expected, label, p in zip(predictions, case.expected, labels, confidence, strict=True):
        assert set(row) == {case.output_name, "label", "label_probability"}
        assert_close(row[case.output_name], expected)
        assert row["label"] == label
        assert abs(row["label_probability"] - p) <= PARITY


def assert_outputs(outputs: dict, case: Case) -> None:
    labels, confidence = case.labels()
    assert set(outputs) == {case.output_name, "label", "label_probability"}
    assert_close(outputs[case.output_name], case.expected)
    assert outputs["label"] == labels
    assert_close(outputs["label_probability"], confidence)


def shuffled(keys: list[str], seed: int) -> list[str]:
    order = list(keys)
    random.Random(seed).shuffle(order)
    return order


@pytest.mark.parametrize("prefix", ["", "/versions/1"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_status(client, name, prefix):
    response = client.get(f"/v1/models/{name}{prefix}")
    assert response.status_code == 200
    assert response.get_json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]}


def test_model_status_of_an_unknown_version(client):
    assert client.get("/v1/models/demand/versions/2").status_code == 404


@pytest.mark.parametrize("prefix", ["", "/versions/1"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_metadata(client, cases, name, prefix):
    card = cases[name].card
    response = client.get(f"/v1/models/{name}{prefix}/metadata")
    assert response.status_code == 200
    document = response.get_json()
    assert document["model_spec"]["name"] == name
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    for side in ("inputs", "outputs"):
        [declared] = card[side]
        info = signature[side][declared["name"]]
        assert info["dtype"] == "DT_FLOAT"
        dims = [int(dim["size"]) for dim in info["tensor_shape"]["dim"]]
        assert dims == [-1, declared["shape"][1]]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_predict_instances_as_lists(client, cases, name):
    case = cases[name]
    reply = call(client, name, {"instances": case.x.tolist()})
    assert_predictions(reply["predictions"], case)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_predict_instances_as_objects_keyed_by_input(client, cases, name):
    case = cases[name]
    instances = [{case.input_name: row} for row in case.x.tolist()]
    reply = call(client, name, {"instances": instances})
    assert_predictions(reply["predictions"], case)


def test_predict_demand_instances_keyed_by_feature_in_any_order(client, cases):
    case = cases["demand"]
    names = case.feature_names
    instances = [{key: row[names.index(key)] for key in shuffled(names, seed)}
                 for seed, row in enumerate(case.x.tolist())]
    assert any(list(instance) != names for instance in instances)
    reply = call(client, "demand", {"instances": instances})
    assert_predictions(reply["predictions"], case)
    assert reply == call(client, "demand", {"instances": case.x.tolist()})


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_predict_inputs_columnar(client, cases, name):
    case = cases[name]
    assert_outputs(call(client, name, {"inputs": case.x.tolist()})["outputs"], case)
    assert_outputs(call(client, name, {"inputs": {case.input_name: case.x.tolist()}})["outputs"], case)


def test_predict_demand_inputs_keyed_by_feature(client, cases):
    case = cases["demand"]
    names = case.feature_names
    columns = {key: case.x[:, names.index(key)].tolist() for key in shuffled(names, seed=1)}
    assert list(columns) != names
    reply = call(client, "demand", {"inputs": columns})
    assert_outputs(reply["outputs"], case)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_predict_at_an_explicit_version(client, cases, name):
    case = cases[name]
    reply = call(client, name, {"instances": case.x.tolist()}, prefix="/versions/1")
    assert_predictions(reply["predictions"], case)


@pytest.mark.parametrize("prefix", ["", "/versions/1"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_explain_gives_every_layer_of_the_forward_propagation(client, cases, name, prefix):
    case = cases[name]
    reply = call(client, name, {"instances": case.x.tolist()}, verb="explain", prefix=prefix)
    layers = case.network.activations(case.x)[1:]  # a1 .. aL
    labels, confidence = case.labels()
    assert (reply["model_name"], reply["model_version"]) == (name, "1")
    assert reply["layers"] == [{"a": f"a{number}", **layer}
                               for number, layer in enumerate(case.card["forward"]["layers"], start=1)]
    assert len(reply["explanations"]) == len(case.x)
    for row, explanation in enumerate(reply["explanations"]):
        assert list(explanation["activations"]) == [f"a{n}" for n in range(1, len(layers) + 1)]
        for number, a in enumerate(layers, start=1):
            assert_close(explanation["activations"][f"a{number}"], a[row])
        assert_close(explanation["prediction"], case.expected[row])
        assert explanation["label"] == labels[row]
        assert abs(explanation["label_probability"] - confidence[row]) <= PARITY
        assert 0 <= explanation["max_abs_difference"] <= PARITY
