"""Training and export: Keras == onnxruntime == the NumPy loop == the NumPy matmul, cards that tell
the truth about their files, determinism, quality floors, and a repository that failed runs leave alone."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest

from modelcard import forward
from tests.conftest import (
    ACCURACY_FLOORS,
    DEMAND_POINTS_BELOW_BAYES,
    MODEL_NAMES,
    MODELS,
    PARITY,
    ROOT,
    latest_version,
    read_card,
)


def onnx_predict(model_dir, x):
    session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def classes(card, probabilities):
    if card["outputs"][0]["shape"][-1] == 1:  # the probability of the second label
        return (probabilities[:, 0] >= 0.5).astype(int)
    return np.argmax(probabilities, axis=1)


@pytest.fixture(scope="module")
def datasets():
    from training import data

    return {name: data.load(name) for name in MODEL_NAMES}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fresh_model_keras_onnx_loop_and_matmul_agree(name, fresh, capsys):
    trained = fresh[name]
    x = trained.dataset.test.x
    keras_out = trained.model.predict(x, verbose=0)
    onnx_out = onnx_predict(trained.path, x)
    network = forward.Network.load(trained.path)
    looped, vectorised = network.predict(x, vectorised=False), network.predict(x)
    figures = {
        "keras-onnx": np.max(np.abs(keras_out - onnx_out)),
        "loop-onnx": np.max(np.abs(looped - onnx_out)),
        "matmul-onnx": np.max(np.abs(vectorised - onnx_out)),
        "loop-keras": np.max(np.abs(looped - keras_out)),
    }
    with capsys.disabled():
        print(f"\n{name} max |difference| on {len(x)} test rows: "
              + ", ".join(f"{k} {v:.1e}" for k, v in figures.items()))
    assert all(value <= PARITY for value in figures.values()), figures


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_committed_model_onnx_loop_and_matmul_agree(name, datasets):
    model_dir = latest_version(name)
    x = datasets[name].test.x
    onnx_out = onnx_predict(model_dir, x)
    network = forward.Network.load(model_dir)
    assert np.max(np.abs(network.predict(x, vectorised=False) - onnx_out)) <= PARITY
    assert np.max(np.abs(network.predict(x) - onnx_out)) <= PARITY


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_card_matches_its_files(name):
    model_dir = latest_version(name)
    card = read_card(model_dir)
    assert card["name"] == name and card["version"] == int(model_dir.name)
    for filename in ("model.onnx", "weights.npz"):
        digest = hashlib.sha256((model_dir / filename).read_bytes()).hexdigest()
        assert card["files"][filename]["sha256"] == digest, filename
    session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    (card_input,), (card_output,) = card["inputs"], card["outputs"]
    assert graph_input.name == card_input["name"] and graph_output.name == card_output["name"]
    assert graph_input.type == graph_output.type == "tensor(float)"
    assert card_input["datatype"] == card_output["datatype"] == "FP32"
    assert graph_input.shape[1:] == card_input["shape"][1:] == [len(card_input["features"])]
    assert graph_output.shape[1:] == card_output["shape"][1:]
    assert card_input["shape"][0] == card_output["shape"][0] == -1
    assert not isinstance(graph_input.shape[0], int)  # a variable batch dimension
    forward = card["forward"]
    assert (forward["input"], forward["output"]) == (card_input["name"], card_output["name"])
    assert [layer["units"] for layer in forward["layers"]][-1] == card_output["shape"][1]
    binary = card_output["shape"][1] == 1
    assert forward["layers"][-1]["activation"] == ("sigmoid" if binary else "softmax")
    assert len(card_output["labels"]) == (2 if binary else card_output["shape"][1])
    assert card["parity"]["reference"] == "keras"
    assert card["parity"]["max_abs_difference"] <= card["parity"]["tolerance"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_committed_model_was_tested_on_this_data(name, datasets):
    card = read_card(latest_version(name))
    assert card["dataset"]["sha256"] == datasets[name].fingerprint()["sha256"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_quality_floors(name, datasets, fresh):
    """Accuracy computed here, from onnxruntime on the test split, not read from the card."""
    test = datasets[name].test
    for model_dir in (latest_version(name), fresh[name].path):
        card = read_card(model_dir)
        accuracy = np.mean(classes(card, onnx_predict(model_dir, test.x)) == test.y)
        assert accuracy == pytest.approx(card["metrics"]["test_accuracy"], abs=1e-4)
        if name == "demand":
            bayes = card["metrics"]["bayes_rule_test_accuracy"]
            assert accuracy >= bayes - DEMAND_POINTS_BELOW_BAYES
        else:
            assert accuracy >= ACCURACY_FLOORS[name]


def test_demand_bayes_figures_are_consistent(datasets):
    from training import data

    test = datasets["demand"].test
    p = data.demand_probability(test.x)
    assert datasets["demand"].extra_metrics["bayes_rule_test_accuracy"] == pytest.approx(
        np.mean((p >= 0.5) == test.y), abs=1e-4)
    # Expected accuracy of the Bayes rule, estimated on an independent sample.
    assert data.demand_bayes_accuracy(seed=7, n=200_000) == pytest.approx(
        datasets["demand"].extra_metrics["bayes_accuracy"], abs=0.005)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_reproduces_the_committed_metrics(name, fresh):
    committed = read_card(latest_version(name))["metrics"]["test_accuracy"]
    assert fresh[name].metrics["test_accuracy"] == pytest.approx(committed, abs=0.01)


def test_training_is_deterministic(tmp_path, fresh):
    from training import pipeline, specs

    again = pipeline.run(specs.load("digits-binary"), tmp_path, verbose=0)
    with np.load(again.path / "weights.npz") as a, np.load(fresh["digits-binary"].path / "weights.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def run_training(*args):
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


def test_unknown_model_name_is_one_clear_line(tmp_path):
    before = snapshot(MODELS)
    result = run_training("no-such-model")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown model 'no-such-model'" in result.stderr and "digits" in result.stderr
    assert snapshot(MODELS) == before


@pytest.mark.parametrize(("content", "complaint"), [
    ("{not json", "cannot read it as JSON"),
    ('{"name": "x"}', "field 'dataset'"),
    ('{"name": "x", "dataset": "digits", "task": "multiclass", "input": "pixels", "output": "p", '
     '"preprocessing": "rescale", "layers": [{"name": "l", "units": 0, "activation": "relu"}], '
     '"training": {"seed": 1, "epochs": 1, "batch_size": 8, "learning_rate": 0.1}}', "units"),
    ('{"name": "x", "dataset": "digits", "task": "multiclass", "input": "pixels", "output": "p", '
     '"preprocessing": "rescale", "layers": [{"name": "l", "units": 10, "activation": "tanh"}], '
     '"training": {"seed": 1, "epochs": 1, "batch_size": 8, "learning_rate": 0.1}}', "activation"),
    ('{"name": "x", "dataset": "digits", "task": "multiclass", "input": "pixels", "output": "p", '
     '"preprocessing": "rescale", "layers": [{"name": "l", "units": 3, "activation": "softmax"}], '
     '"training": {"seed": 1, "epochs": 1, "batch_size": 8, "learning_rate": 0.1}}', "10 units"),
])
def test_malformed_spec_is_one_clear_line(tmp_path, content, complaint):
    spec = tmp_path / "bad.json"
    spec.write_text(content)
    repository = tmp_path / "models"
    result = run_training(str(spec), "--repository", str(repository))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert complaint in result.stderr
    assert not repository.exists()


def test_unwritable_repository_is_one_clear_line_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_training("digits-binary", "--repository", str(blocker / "models"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "cannot write into" in result.stderr
    assert "Epoch" not in result.stdout  # refused before any training


def test_a_failed_write_leaves_no_version_behind(tmp_path, fresh, monkeypatch):
    from training import export, fit

    trained = fresh["digits-binary"]
    spec, dataset = trained.spec, trained.dataset
    graph = export.onnx_graph(spec, trained.model, fit.preprocessing_parameters(spec, trained.model),
                              dataset.train.x.shape[1])

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        export.write_version(tmp_path, spec, dataset, graph, {"type": "rescale"}, {}, {}, 0.0)
    assert not (tmp_path / spec["name"]).exists()  # not even the model folder the run created


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-6), ("float16", 4e-3)])
def test_the_exact_gelu_converts_as_one_minus_erf(dtype, tolerance):
    """tf.nn.gelu(approximate=False) calls Erfc, which tf2onnx lacks: to_onnx converts it as 1 - Erf,
    right far into both tails (where 1 - erf cancels) and in the graph's dtype."""
    import tensorflow as tf

    from training import export

    def call(x):
        return {"y": tf.nn.gelu(x, approximate=False), "erfc": tf.math.erfc(x)}

    graph = export.to_onnx(call, [tf.TensorSpec([None, 3], dtype, name="x")])
    assert "Erf" in {node.op_type for node in graph.graph.node}
    x = np.linspace(-12, 12, 600, dtype=dtype).reshape(-1, 3)
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    gelu, erfc = session.run(["y", "erfc"], {"x": x})
    assert gelu.dtype == erfc.dtype == np.dtype(dtype)
    for got, expected in ((gelu, tf.nn.gelu(x, approximate=False)), (erfc, tf.math.erfc(x))):
        np.testing.assert_allclose(got, expected.numpy(), rtol=tolerance, atol=tolerance)
