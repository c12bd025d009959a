"""Keras models of several kinds, built in the test session, and imported with the real command
(and scikit-learn models converted by skl2onnx, for tests/test_sklearn.py and the importer's refusals).

`import_all(repository)` saves each model (as .keras, .h5, a SavedModel folder or .onnx), runs
`python -m training import` on it in a subprocess (several at once), and returns, for each model
name, the version written, inputs drawn for it and Keras' own answers on them: what a service
test needs to serve the repository and compare with Keras. Small, seeded, no downloads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ROWS = 5  # rows of the inputs returned for each model
PARALLEL = 2  # imports at once (this machine has two cores)


@dataclass(frozen=True)
class Imported:
    """One imported model version, inputs for it and Keras' answers on them."""

    path: Path  # the version folder written, models/<name>/<version>
    inputs: dict[str, np.ndarray]  # input name -> rows, in the card's dtype
    outputs: dict[str, np.ndarray]  # output name -> Keras' answer on `inputs`
    model: object = field(default=None, repr=False, compare=False)  # the keras.Model imported
    command: list[str] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""

    @property
    def name(self) -> str:
        return self.path.parent.name


# ------------------------------------------------------------------ model builders


def _keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


def convolutional(seed: int = 1):
    """Images 32x32x3 -> Conv2D -> max pooling -> Conv2D -> global pooling -> Dense softmax 10."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    image = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(image)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool2")(x)
    classes = keras.layers.Dense(10, activation="softmax", name="classes")(x)
    return keras.Model(image, classes, name="convolutional")


def mobilenet(seed: int = 1):
    """MobileNetV3Small with random weights on 96x96x3 images (for the benchmark, not the tests).

    Untrained, its logits are near 1e-11 and its softmax a flat 0.1: it measures speed, not parity."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    return keras.applications.MobileNetV3Small(weights=None, input_shape=(96, 96, 3), classes=10)


def recurrent(seed: int = 2, cell: str = "gru"):
    """Token ids of any length -> Embedding(50, 8) -> GRU (or LSTM) 16 -> Dense sigmoid 1."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    layer = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM}[cell]
    return keras.Sequential([
        keras.Input((None,), dtype="int32", name="tokens"),
        keras.layers.Embedding(50, 8, name="embed"),
        layer(16, name=cell),
        keras.layers.Dense(1, activation="sigmoid", name="positive"),
    ], name="recurrent")


def two_headed(seed: int = 3):
    """Two inputs (`tokens` INT64 via an Embedding, `numbers` FP32), two outputs (`churn` sigmoid 1,
    `plan` softmax 3)."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((6,), dtype="int64", name="tokens")
    numbers = keras.Input((4,), name="numbers")
    embedded = keras.layers.GlobalAveragePooling1D(name="average")(
        keras.layers.Embedding(100, 4, name="embed")(tokens))
    hidden = keras.layers.Dense(12, activation="relu", name="hidden")(
        keras.layers.Concatenate(name="join")([embedded, numbers]))
    churn = keras.layers.Dense(1, activation="sigmoid", name="churn")(hidden)
    plan = keras.layers.Dense(3, activation="softmax", name="plan")(hidden)
    return keras.Model({"tokens": tokens, "numbers": numbers}, [churn, plan], name="two_headed")


def dense_stack(seed: int = 4):
    """A Sequential stack of Dense layers after an adapted Normalization: gets a forward section."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    measurements = (rng.normal(size=(200, 4)) * [1.0, 5.0, 0.5, 20.0] + [3, -2, 0.5, 100]).astype(np.float32)
    normalize = keras.layers.Normalization(name="normalize")
    normalize.adapt(measurements)
    return keras.Sequential([
        keras.Input((4,), name="measurements"),
        normalize,
        keras.layers.Dense(8, activation="relu", name="hidden"),
        keras.layers.Dense(3, activation="softmax", name="species"),
    ], name="dense_stack")


def transformer(seed: int = 7):
    """A transformer encoder block on 8 token ids: Embedding(30, 8), self-attention (2 heads),
    residuals and LayerNormalization, a feed-forward block with the exact GELU, pooling, softmax 2."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    tokens = keras.Input((8,), dtype="int32", name="tokens")
    x = layers.Embedding(30, 8, name="embed")(tokens)
    attended = layers.MultiHeadAttention(num_heads=2, key_dim=4, name="attention")(x, x)
    x = layers.LayerNormalization(name="norm1")(layers.Add(name="residual1")([x, attended]))
    fed = layers.Dense(8, name="feed2")(layers.Dense(16, activation="gelu", name="feed1")(x))
    x = layers.LayerNormalization(name="norm2")(layers.Add(name="residual2")([x, fed]))
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(tokens, layers.Dense(2, activation="softmax", name="label")(x), name="transformer")


def string_input(seed: int = 5):
    """A model whose input is a string tensor: the card cannot declare it."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    text = keras.Input((1,), dtype="string", name="text")
    ids = keras.layers.StringLookup(vocabulary=["a", "b", "c"], name="lookup")(text)
    x = keras.layers.Flatten(name="flat")(keras.layers.Embedding(5, 2, name="embed")(ids))
    return keras.Model(text, keras.layers.Dense(1, activation="sigmoid", name="score")(x))


def hashing(seed: int = 6):
    """Integer ids hashed into 10 bins (tf.strings ops inside): a layer the ONNX converter refuses."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    ids = keras.Input((3,), dtype="int64", name="ids")
    bins = keras.layers.Hashing(num_bins=10, name="hash")(ids)
    x = keras.layers.Flatten(name="flat")(keras.layers.Embedding(10, 2, name="embed")(bins))
    return keras.Model(ids, keras.layers.Dense(1, name="score")(x), name="hashing")


# ------------------------------------------------------------------ scikit-learn


def iris() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled iris data (nothing is downloaded): float32 measurements, classes 0..2."""
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


def iris_pipeline():
    """StandardScaler then LogisticRegression, fitted on iris (lbfgs: deterministic, no seed)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()),
                     ("classify", LogisticRegression(max_iter=1000))]).fit(*iris())


def iris_forest(seed: int = 0):
    """A small RandomForestClassifier fitted on iris."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=10, max_depth=4, random_state=seed).fit(*iris())


def save_sklearn(estimator, path: Path, zipmap: bool = False) -> Path:
    """The fitted estimator converted by skl2onnx (opset 17, input `X` FP32 [-1, 4]): outputs
    `label` INT64 [-1] and `probabilities` FP32 [-1, 3], or with ZipMap `output_label` and
    `output_probability`, a sequence of {class: probability} maps."""
    import onnx
    from skl2onnx import to_onnx

    options = None if zipmap else {"zipmap": False}
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(to_onnx(estimator, iris()[0][:1], options=options, target_opset=17), path)
    return path


# ------------------------------------------------------------------ saving


def save(model, folder: Path, fmt: str) -> Path:
    """Save as .keras, .h5 (legacy HDF5), a SavedModel folder (model.export) or .onnx."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "keras":
        path = folder / f"{model.name}.keras"
        model.save(path)
    elif fmt == "h5":
        import logging

        path = folder / f"{model.name}.h5"
        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.ERROR)  # Keras logs that HDF5 is a legacy format: we know
        try:
            model.save(path)
        finally:
            absl.setLevel(level)
    elif fmt == "savedmodel":
        path = folder / f"{model.name}_savedmodel"
        model.export(path, verbose=False)
    elif fmt == "onnx":
        path = folder / f"{model.name}.onnx"
        keras_outputs(model, sample_inputs(model, rows=1), [])  # Keras exports called models only
        model.export(path, format="onnx", verbose=False)
    else:
        raise ValueError(fmt)
    return path


def sample_inputs(model, rows: int = ROWS, seed: int = 10) -> dict[str, np.ndarray]:
    """Rows for each input of the model, drawn here (not by the importer): in the input's dtype;
    integers within the vocabulary of the Embedding they feed."""
    keras = _keras()
    rng = np.random.default_rng(seed)
    vocabulary = {id(node.input_tensors[0]): layer.input_dim
                  for layer in model.layers if isinstance(layer, keras.layers.Embedding)
                  for node in layer._inbound_nodes}
    structure = model.inputs[0] if isinstance(model, keras.Sequential) else model.input
    names = (keras.tree.flatten({key: key for key in structure}) if isinstance(structure, dict)
             else [tensor.name for tensor in model.inputs])
    inputs = {}
    for name, tensor in zip(names, model.inputs, strict=True):
        shape = [rows] + [d if d is not None else 7 for d in tensor.shape[1:]]
        dtype = np.dtype(keras.backend.standardize_dtype(tensor.dtype))
        if dtype.kind in "iu":
            inputs[name] = rng.integers(0, vocabulary.get(id(tensor), 10), size=shape).astype(dtype)
        else:
            inputs[name] = rng.uniform(-1, 1, size=shape).astype(dtype)
    return inputs


def keras_outputs(model, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
    keras = _keras()
    structure = model.inputs[0] if isinstance(model, keras.Sequential) else model.input
    if isinstance(structure, dict):
        x = {key: inputs[key] for key in structure}
    elif len(model.inputs) == 1:
        x = next(iter(inputs.values()))
    else:
        x = [inputs[tensor.name] for tensor in model.inputs]
    answer = keras.tree.flatten(model(x, training=False))
    return {name: keras.ops.convert_to_numpy(value)
            for name, value in zip(output_names, answer, strict=False)}


# ------------------------------------------------------------------ the command


def command(model_file: Path, name: str, repository: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "training", "import", str(model_file), "--name", name,
            "--repository", str(repository), *options]


def command_file(job: list[str]) -> Path:
    """The model file of an import command."""
    return Path(job[job.index("import") + 1])


def run_import(model_file: Path, name: str, repository: Path, *options: str,
               timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(command(model_file, name, repository, *options), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def run_many(jobs: list[list[str]], parallel: int = PARALLEL,
             timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Run commands, `parallel` at a time; their results in the order given."""
    def run(job: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(job, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(run, jobs))


# name -> (builder, format, extra options)
MODELS = {
    "convolutional": (convolutional, "keras", ()),
    "recurrent": (recurrent, "keras", ()),
    "two-headed": (two_headed, "keras", ("--labels", "churn=stays,leaves", "--labels", "plan=basic,plus,pro",
                                         "--description", "Churn and plan from tokens and numbers.")),
    "dense-stack": (dense_stack, "keras", ("--labels", "species=setosa,versicolor,virginica")),
    "two-headed-h5": (two_headed, "h5", ()),
    "recurrent-savedmodel": (lambda: recurrent(cell="lstm"), "savedmodel", ()),
    "convolutional-onnx": (convolutional, "onnx", ()),
    "transformer": (transformer, "keras", ()),
}


def import_all(repository: Path, workdir: Path | None = None) -> dict[str, Imported]:
    """Build, save and import every model of MODELS into `repository`; fail loudly if one is refused."""
    workdir = workdir or repository.parent / f"{repository.name}-sources"
    jobs, prepared = [], {}
    for name, (build, fmt, options) in MODELS.items():
        model = build()
        model_file = save(model, workdir / name, fmt)
        inputs = sample_inputs(model)
        jobs.append(command(model_file, name, repository, *options))
        prepared[name] = (model, inputs)
    results = run_many(jobs)
    imported = {}
    for (name, (model, inputs)), job, result in zip(prepared.items(), jobs, results, strict=True):
        out, err = result.stdout, result.stderr
        if result.returncode != 0:
            raise AssertionError(f"importing {name} failed with {result.returncode}: {err.strip()}")
        path = Path(out.strip().splitlines()[-1].removeprefix("wrote "))
        card = json.loads((path / "card.json").read_text())
        order = _keras_output_order(model, card)
        outputs = keras_outputs(model, inputs, order)
        imported[name] = Imported(path, inputs, outputs, model, job, out, err)
    return imported


def _keras_output_order(model, card: dict) -> list[str]:
    """The card's output names in the order Keras returns the outputs (the card lists graph order)."""
    keras = _keras()
    if card["source"]["format"] in ("savedmodel", "onnx"):  # output_0, output_1 / Identity:0, ...
        return [entry["name"] for entry in card["outputs"]]
    structure = model.outputs[0] if isinstance(model, keras.Sequential) else model.output
    if isinstance(structure, dict):
        return keras.tree.flatten({key: key for key in structure})
    return [tensor._keras_history[0].name for tensor in model.outputs]
