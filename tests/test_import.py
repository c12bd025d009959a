"""python -m training import: Keras, h5, SavedModel and ONNX files become versions whose cards parse,
whose signatures are Keras', whose model.onnx answers as Keras does, with a NumPy forward section
for plain Dense stacks only; and every refusal is one line, exit code 2, the repository untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest

from modelcard import forward
from modelcard.card import ModelCard
from modelcard.tables import DATATYPE_OF
from tests import imported as models
from tests.conftest import ROOT, read_card

KERAS_FORMATS = ("keras", "h5")


def session(path):
    return onnxruntime.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])


def onnx_run(path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    running = session(path)
    names = [o.name for o in running.get_outputs()]
    return dict(zip(names, running.run(names, inputs), strict=True))


def within(card: dict, expected: np.ndarray, got: np.ndarray) -> bool:
    """The card's rule: |Keras - onnxruntime| <= tolerance x max(1, max |Keras|)."""
    tolerance = card["parity"]["tolerance"] or 1e-4
    scale = max(1.0, float(np.max(np.abs(expected))))
    return expected.shape == got.shape and float(np.max(np.abs(expected - got))) <= tolerance * scale


def keras_signature(model):
    """(inputs, outputs) of a Keras model as (name, v2 datatype, shape with -1) triples, read from Keras."""
    import keras

    def triple(name, tensor):
        dtype = np.dtype(keras.backend.standardize_dtype(tensor.dtype))
        return name, DATATYPE_OF[dtype], [-1 if d is None else d for d in tensor.shape]

    inputs = [triple(t.name, t) for t in model.inputs]
    outputs = [triple(t._keras_history[0].name, t) for t in model.outputs]
    return inputs, outputs


def signature(card: dict, key: str):
    return [(t["name"], t["datatype"], t["shape"]) for t in card[key]]


# ------------------------------------------------------------------ what the fixture imported


def test_every_kind_imports_and_its_card_parses(imported):
    assert set(imported) == set(models.MODELS)
    for name, result in imported.items():
        card = read_card(result.path)
        parsed = ModelCard.parse(card)
        assert (parsed.name, parsed.version) == (name, int(result.path.name)) == (card["name"], 1)
        fmt = models.MODELS[name][1]
        assert card["source"]["format"] == fmt
        assert card["source"]["kind"] == ("onnx" if fmt == "onnx" else "keras")
        assert card["source"]["file"] == models.command_file(result.command).name
        assert result.stderr.strip() == "", result.stderr  # quiet: nothing but results on stdout
        assert result.stdout.splitlines()[0].startswith(f"loaded {card['source']['file']}: ")
        if fmt == "onnx":
            graph = onnx.load(str(models.command_file(result.command)))
            assert card["opset"] == next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
        else:
            assert card["opset"] == 17


def test_cards_list_every_file_with_its_sha256(imported):
    for result in imported.values():
        card = read_card(result.path)
        on_disk = sorted(p.name for p in result.path.iterdir())
        assert on_disk == sorted([*card["files"], "card.json"])
        for filename, entry in card["files"].items():
            assert entry["sha256"] == hashlib.sha256((result.path / filename).read_bytes()).hexdigest()
        # Nothing else left beside the version: no staging folder.
        assert [p.name for p in result.path.parent.iterdir()] == [result.path.name]


@pytest.mark.parametrize("name", [n for n, (_, fmt, _) in models.MODELS.items() if fmt in KERAS_FORMATS])
def test_signature_is_the_keras_models(imported, name):
    result = imported[name]
    card = read_card(result.path)
    inputs, outputs = keras_signature(result.model)
    assert signature(card, "inputs") == inputs
    assert sorted(signature(card, "outputs")) == sorted(outputs)
    graph = session(result.path)
    assert [i.name for i in graph.get_inputs()] == [t["name"] for t in card["inputs"]]
    assert [o.name for o in graph.get_outputs()] == [t["name"] for t in card["outputs"]]
    for node, tensor in zip(graph.get_inputs(), card["inputs"], strict=True):
        # Every dimension Keras leaves open is symbolic in the graph; the others are Keras'.
        assert [d if isinstance(d, int) else -1 for d in node.shape] == tensor["shape"]
        assert not isinstance(node.shape[0], int)


def test_savedmodel_signature_is_its_serving_signature(imported):
    import tensorflow as tf

    result = imported["recurrent-savedmodel"]
    card = read_card(result.path)
    saved = tf.saved_model.load(str(models.command_file(result.command)))
    _, arguments = saved.signatures["serving_default"].structured_input_signature
    returned = saved.signatures["serving_default"].structured_outputs
    assert signature(card, "inputs") == [
        (name, DATATYPE_OF[np.dtype(spec.dtype.as_numpy_dtype)], [-1 if d is None else d for d in spec.shape])
        for name, spec in arguments.items()]
    assert sorted(t["name"] for t in card["outputs"]) == sorted(returned)
    assert card["parity"]["reference"] == "tensorflow"


@pytest.mark.parametrize("name", list(models.MODELS))
def test_onnxruntime_answers_as_keras_does(imported, name):
    result = imported[name]
    card = read_card(result.path)
    answers = onnx_run(result.path, result.inputs)
    assert set(answers) == set(result.outputs)
    for output, expected in result.outputs.items():
        assert within(card, expected, answers[output]), output
    if card["parity"]["reference"] is not None:
        assert 0 <= card["parity"]["max_abs_difference"] <= card["parity"]["tolerance"]
        assert card["parity"]["rows"] > 0


@pytest.mark.parametrize("name", ["recurrent", "recurrent-savedmodel"])
def test_sequence_length_stays_dynamic(imported, name):
    result = imported[name]
    card = read_card(result.path)
    rng = np.random.default_rng(3)
    embedding = next(layer for layer in result.model.layers if type(layer).__name__ == "Embedding")
    for length in (2, 13):
        tokens = rng.integers(0, embedding.input_dim, size=(3, length)).astype(np.int32)
        expected = result.model(tokens, training=False).numpy()
        (got,) = onnx_run(result.path, {"tokens": tokens}).values()
        assert within(card, expected, got), length


def test_integer_inputs_feeding_an_embedding_get_its_range(imported):
    for name in ("two-headed", "recurrent", "two-headed-h5"):
        result = imported[name]
        card = read_card(result.path)
        embedding = next(layer for layer in result.model.layers if type(layer).__name__ == "Embedding")
        tokens = next(t for t in card["inputs"] if t["name"] == "tokens")
        assert tokens["range"] == [0, embedding.input_dim - 1]
        assert all("range" not in t for t in card["inputs"] if t["name"] != "tokens")


def test_two_outputs_keep_their_names_and_labels(imported):
    card = read_card(imported["two-headed"].path)
    assert [t["name"] for t in card["outputs"]] == ["churn", "plan"]
    labels = {t["name"]: t.get("labels") for t in card["outputs"]}
    assert labels == {"churn": ["stays", "leaves"], "plan": ["basic", "plus", "pro"]}
    assert card["description"] == "Churn and plan from tokens and numbers."
    assert "labels" not in read_card(imported["two-headed-h5"].path)["outputs"][0]


def test_forward_section_only_for_the_dense_stack(imported):
    for name, result in imported.items():
        card = read_card(result.path)
        assert ("forward" in card) == (name == "dense-stack"), name
        assert ((result.path / "weights.npz").exists()) == (name == "dense-stack"), name


def test_forward_section_agrees_with_onnxruntime_and_keras(imported):
    import keras

    result = imported["dense-stack"]
    card = read_card(result.path)
    section = card["forward"]
    assert (section["input"], section["output"]) == ("measurements", "species")
    dense = [layer for layer in result.model.layers if isinstance(layer, keras.layers.Dense)]
    assert [(t["name"], t["units"]) for t in section["layers"]] == [(d.name, d.units) for d in dense]
    normalize = result.model.get_layer("normalize")
    assert section["preprocessing"]["type"] == "standardize"
    np.testing.assert_allclose(section["preprocessing"]["mean"], np.ravel(normalize.mean), rtol=1e-6)
    x = result.inputs["measurements"]
    network = forward.Network.load(result.path)
    answer = onnx_run(result.path, result.inputs)["species"]
    for predicted in (network.predict(x), network.predict(x, vectorised=False)):
        assert within(card, answer, predicted)
        assert within(card, result.outputs["species"], predicted)


def test_plain_onnx_file_has_no_reference(imported):
    card = read_card(imported["convolutional-onnx"].path)
    assert card["parity"]["reference"] is None
    assert card["source"] == {"kind": "onnx", "file": "convolutional.onnx", "format": "onnx"}
    source = models.command_file(imported["convolutional-onnx"].command)
    assert (imported["convolutional-onnx"].path / "model.onnx").read_bytes() == source.read_bytes()


# ------------------------------------------------------------------ refusals


def tree_digest(folder) -> str:
    """Every path under folder (folders too) and every file's bytes."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        if path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def refusals(imported, tmp_path_factory):
    """Every refusal run at once (two at a time) against a copy of the imported repository."""
    work = tmp_path_factory.mktemp("refusals")
    repository = work / "models"
    shutil.copytree(imported["dense-stack"].path.parent.parent, repository)
    dense = models.command_file(imported["dense-stack"].command)
    (work / "text.keras").write_text("a text file, not a model\n")
    (work / "noise.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    text_model = models.save(models.string_input(), work / "string", "keras")
    hashing = models.save(models.hashing(), work / "hashing", "keras")
    zipmap = models.save_sklearn(models.iris_pipeline(), work / "zipmap.onnx", zipmap=True)
    rows = imported["dense-stack"].inputs["measurements"]
    np.savez(work / "wrong-key.npz", measurement=rows)
    np.savez(work / "wrong-shape.npz", measurements=rows[:, :3])
    np.savez(work / "good.npz", measurements=rows.astype(np.float64))
    cases = {
        "not a model": ([work / "text.keras", "--name", "fresh"], "text.keras"),
        "random h5": ([work / "noise.h5", "--name", "fresh"], "noise.h5"),
        "missing file": ([work / "missing.keras", "--name", "fresh"], "missing.keras"),
        "string input": ([text_model, "--name", "fresh"], "'text'"),
        "converter refuses a layer": ([hashing, "--name", "fresh"], "StringToHashBucketFast"),
        "scikit-learn's ZipMap": ([zipmap, "--name", "fresh"], "pass options={'zipmap': False} to skl2onnx"),
        "sample with a wrong key": ([dense, "--name", "fresh", "--sample", work / "wrong-key.npz"],
                                    "'measurement'"),
        "sample with a wrong shape": ([dense, "--name", "fresh", "--sample", work / "wrong-shape.npz"],
                                      "'measurements'"),
        "labels for an unknown output": ([dense, "--name", "fresh", "--labels", "kinds=a,b,c"], "'kinds'"),
        "labels of the wrong count": ([dense, "--name", "fresh", "--labels", "species=a,b"], "species"),
        "existing version": ([dense, "--name", "dense-stack", "--version", "1"], "exists"),
        "bad name": ([dense, "--name", "../escape"], "'../escape'"),
    }
    before = tree_digest(repository)
    jobs = [[sys.executable, "-m", "training", "import", *map(str, arguments),
             "--repository", str(repository)] for arguments, _ in cases.values()]
    # One that succeeds, with a sample, into a repository of its own.
    jobs.append([sys.executable, "-m", "training", "import", str(dense), "--name", "sampled",
                 "--sample", str(work / "good.npz"), "--repository", str(work / "sampled")])
    *results, sampled = models.run_many(jobs)
    return {
        "cases": {case: (result, needle) for (case, (_, needle)), result in zip(cases.items(), results,
                                                                                 strict=True)},
        "unchanged": tree_digest(repository) == before,
        "sampled": (sampled, work / "sampled" / "sampled" / "1", len(rows)),
    }


REFUSALS = ["not a model", "random h5", "missing file", "string input", "converter refuses a layer",
            "scikit-learn's ZipMap",
            "sample with a wrong key", "sample with a wrong shape", "labels for an unknown output",
            "labels of the wrong count", "existing version", "bad name"]


@pytest.mark.parametrize("case", REFUSALS)
def test_refusal_is_one_line_and_exit_code_2(refusals, case):
    result, needle = refusals["cases"][case]
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0], lines[0]
    assert "wrote" not in result.stdout


def test_refusals_leave_the_repository_byte_for_byte(refusals):
    assert set(refusals["cases"]) == set(REFUSALS)
    assert refusals["unchanged"]


def test_a_sample_is_converted_and_counted(refusals):
    result, path, rows = refusals["sampled"]
    assert result.returncode == 0, result.stderr
    card = read_card(path)
    assert card["parity"]["rows"] == rows and "good.npz" in card["parity"]["data"]
    assert "forward" in card


# ------------------------------------------------------------------ the command line


def test_help_documents_every_flag():
    result = subprocess.run([sys.executable, "-m", "training", "import", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("MODEL_FILE", "--name", "--repository", "--version", "--sample", "--labels",
                 "--description", "--tolerance"):
        assert flag in result.stdout, flag
    old = subprocess.run([sys.executable, "-m", "training", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert old.returncode == 0 and "--reports" in old.stdout and "import" in old.stdout


def test_card_is_json_with_the_contract_keys(imported):
    card = json.loads((imported["two-headed"].path / "card.json").read_text())
    for key in ("name", "version", "description", "platform", "source", "inputs", "outputs", "parity",
                "files", "opset", "libraries", "created"):
        assert key in card, key
