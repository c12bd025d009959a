"""scikit-learn models converted by skl2onnx without ZipMap (a StandardScaler + LogisticRegression
pipeline and a random forest, fitted on the bundled iris data), imported with the real command and
served as `make serve` runs them (nginx, gunicorn and the gRPC processes).

The oracle is onnxruntime run directly on the converted file: v2 JSON, v2 binary (tritonclient.http),
TF Serving rows and columns, and gRPC (tritonclient.grpc raw, and typed contents) must answer its
labels exactly and its probabilities within 1e-6. The converted file itself is checked against
scikit-learn's own predict and predict_proba first, so that the oracle is worth trusting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import front_door, read_card
from tests.imported import Imported, command, iris, iris_forest, iris_pipeline, run_many, save_sklearn
from tests.onnx_models import run
from tests.test_imported_served import DATATYPE_OF, v2_body

PROBABILITY = 1e-6  # served against onnxruntime
SKLEARN = 1e-5  # onnxruntime (float32) against scikit-learn (float64)
SPECIES = ("setosa", "versicolor", "virginica")
# name -> (builder, import options)
MODELS = {
    "iris-pipeline": (iris_pipeline, ("--labels", f"probabilities={','.join(SPECIES)}")),
    "iris-forest": (iris_forest, ()),
}
NAMES = list(MODELS)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Imported]:
    """Each model fitted, converted, imported; its inputs (five rows of iris, every species) and
    onnxruntime's answers on them, from the converted file."""
    work = tmp_path_factory.mktemp("sklearn")
    x = iris()[0][::30]
    estimators = {name: build() for name, (build, _) in MODELS.items()}
    files = {name: save_sklearn(estimator, work / f"{name}.onnx") for name, estimator in estimators.items()}
    jobs = [command(files[name], name, work / "models", *options) for name, (_, options) in MODELS.items()]
    models = {}
    for (name, estimator), job, result in zip(estimators.items(), jobs, run_many(jobs), strict=True):
        assert result.returncode == 0, result.stderr
        path = Path(result.stdout.strip().splitlines()[-1].removeprefix("wrote "))
        models[name] = Imported(path, {"X": x}, run(files[name], {"X": x}), estimator, job,
                                result.stdout, result.stderr)
    return models


@pytest.fixture(scope="module")
def served(converted):
    (repository,) = {model.path.parent.parent for model in converted.values()}
    with front_door(repository, workers=1) as running:
        yield running


def assert_onnxruntime(answer: dict, model: Imported) -> None:
    """Labels exactly (and as integers), probabilities within PROBABILITY, in onnxruntime's shapes."""
    assert set(answer) >= set(model.outputs), set(answer)
    label, expected = np.asarray(answer["label"]), model.outputs["label"]
    assert label.dtype.kind == "i" and label.shape == expected.shape, label
    np.testing.assert_array_equal(label, expected)
    probabilities = np.asarray(answer["probabilities"], dtype=np.float64)
    assert probabilities.shape == model.outputs["probabilities"].shape
    assert np.max(np.abs(probabilities - model.outputs["probabilities"])) <= PROBABILITY


@pytest.mark.parametrize("name", NAMES)
def test_the_converted_file_answers_as_scikit_learn(converted, name):
    model = converted[name]
    x = model.inputs["X"]
    np.testing.assert_array_equal(model.outputs["label"], model.model.predict(x))
    assert np.max(np.abs(model.outputs["probabilities"] - model.model.predict_proba(x))) <= SKLEARN
    assert set(model.outputs["label"]) == {0, 1, 2}  # the rows cover every species


@pytest.mark.parametrize("name", NAMES)
def test_the_card_declares_the_converted_signature(converted, name):
    model = converted[name]
    card = read_card(model.path)
    assert [(t["name"], t["datatype"], t["shape"]) for t in card["inputs"]] == [("X", "FP32", [-1, 4])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in card["outputs"]] == [
        ("label", "INT64", [-1]), ("probabilities", "FP32", [-1, 3])]
    assert card["source"] == {"kind": "onnx", "file": f"{name}.onnx", "format": "onnx"}
    assert (model.path / "model.onnx").read_bytes() == Path(model.command[model.command.index("import") + 1]
                                                             ).read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_v2_json(served, converted, name):
    model = converted[name]
    reply = requests.post(f"{served.url}/v2/models/{name}/infer", json=v2_body(model), timeout=60)
    assert reply.status_code == 200, reply.text
    tensors = reply.json()["outputs"]
    assert [(t["name"], t["datatype"]) for t in tensors] == [("label", "INT64"), ("probabilities", "FP32")]
    assert_onnxruntime({t["name"]: np.reshape(t["data"], t["shape"]) for t in tensors}, model)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_tritonclient_http(served, converted, name, binary):
    import tritonclient.http as triton

    model = converted[name]
    client = triton.InferenceServerClient(served.url.removeprefix("http://"), network_timeout=60)
    x = model.inputs["X"]
    tensor = triton.InferInput("X", list(x.shape), DATATYPE_OF[x.dtype])
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = [triton.InferRequestedOutput(output, binary_data=binary) for output in model.outputs]
    result = client.infer(name, [tensor], outputs=wanted)
    assert result.as_numpy("label").dtype == np.int64
    assert_onnxruntime({output: result.as_numpy(output) for output in model.outputs}, model)


@pytest.mark.parametrize("name", NAMES)
def test_tfserving_rows_and_columns(served, converted, name):
    model = converted[name]
    x = model.inputs["X"].tolist()
    reply = requests.post(f"{served.url}/v1/models/{name}:predict", json={"instances": x}, timeout=60)
    assert reply.status_code == 200, reply.text
    predictions = reply.json()["predictions"]
    rows = {key: [row[key] for row in predictions] for key in predictions[0]}
    assert_onnxruntime(rows, model)
    reply = requests.post(f"{served.url}/v1/models/{name}:predict", json={"inputs": x}, timeout=60)
    assert reply.status_code == 200, reply.text
    columns = reply.json()["outputs"]
    assert_onnxruntime(columns, model)
    labelled = {"probabilities_label", "probabilities_label_probability"}
    for answer in (rows, columns):
        assert set(answer) == {"label", "probabilities"} | (labelled if MODELS[name][1] else set())


def test_tfserving_labels_name_the_most_probable_species(served, converted):
    """--labels probabilities=...: each row's species and its probability beside the outputs."""
    model = converted["iris-pipeline"]
    probabilities = model.outputs["probabilities"]
    best = np.argmax(probabilities, axis=1)
    reply = requests.post(f"{served.url}/v1/models/iris-pipeline:predict",
                          json={"instances": model.inputs["X"].tolist()}, timeout=60)
    for row, prediction in enumerate(reply.json()["predictions"]):
        species = best[row]
        assert prediction["probabilities_label"] == SPECIES[species] == SPECIES[model.outputs["label"][row]]
        assert abs(prediction["probabilities_label_probability"] - probabilities[row, species]) <= PROBABILITY


@pytest.mark.parametrize("name", NAMES)
def test_grpc_raw_and_typed(served, converted, name):
    import grpc
    import tritonclient.grpc as triton
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from tests.test_grpc import answer_arrays, typed_request

    model = converted[name]
    x = model.inputs["X"]
    client = triton.InferenceServerClient(served.grpc)
    tensor = triton.InferInput("X", list(x.shape), DATATYPE_OF[x.dtype]).set_data_from_numpy(x)
    result = client.infer(name, [tensor])
    assert_onnxruntime({output: result.as_numpy(output) for output in model.outputs}, model)
    with grpc.insecure_channel(served.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(typed_request(service_pb2, name, model.inputs), timeout=60)
    assert_onnxruntime(answer_arrays(answer), model)
