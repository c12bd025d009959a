"""Export a fitted Keras model to ONNX and write one version into the model repository.

Keras 3's Normalization layer exports its statistics as extra graph inputs, so the graph is
traced from a tf.function that applies the card's preprocessing with constants and then
the model's Dense layers: one input, one named output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime
import sklearn
import tensorflow as tf
import tf2onnx

from training import TrainingError
from training.data import Dataset

OPSET = 17
# Largest |Keras - onnxruntime| allowed before a version is published (float32 arithmetic in a
# different order stays near 1e-7 for the networks here).
TOLERANCE = 1e-5


class ExportError(TrainingError):
    """The exported graph failed a check; nothing was written."""


def onnx_graph(spec: dict, model: keras.Model, preprocessing: dict, features: int) -> onnx.ModelProto:
    dense_layers = [model.get_layer(layer["name"]) for layer in spec["layers"]]
    signature = [tf.TensorSpec([None, features], tf.float32, name=spec["input"])]

    @tf.function(input_signature=signature)
    def serve(x):
        if preprocessing["type"] == "standardize":
            x = (x - tf.constant(preprocessing["mean"], tf.float32)) / tf.constant(
                preprocessing["std"], tf.float32
            )
        elif preprocessing["type"] == "rescale":
            x = x * tf.constant(preprocessing["scale"], tf.float32) + tf.constant(
                preprocessing["offset"], tf.float32
            )
        for layer in dense_layers:
            x = layer(x)
        return {spec["output"]: x}  # the dict key becomes the ONNX output's name

    graph, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET)
    return graph


def check(graph: onnx.ModelProto, spec: dict, model: keras.Model, dataset: Dataset) -> float:
    """onnx.checker, one input and one output with the spec's names, and agreement with Keras."""
    onnx.checker.check_model(graph, full_check=True)
    inputs = [i.name for i in graph.graph.input]
    outputs = [o.name for o in graph.graph.output]
    if inputs != [spec["input"]] or outputs != [spec["output"]]:
        raise ExportError(f"expected input {spec['input']!r} and output {spec['output']!r}, "
                          f"got inputs {inputs} and outputs {outputs}")
    session = onnxruntime.InferenceSession(
        graph.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    onnx_out = session.run(None, {spec["input"]: dataset.test.x})[0]
    keras_out = model.predict(dataset.test.x, verbose=0)
    difference = float(np.max(np.abs(onnx_out - keras_out)))
    if difference > TOLERANCE:
        raise ExportError(f"onnxruntime and Keras differ by {difference:.2e} on the test split")
    return difference


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def next_version(model_root: Path) -> int:
    versions = [int(p.name) for p in model_root.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def card(spec, dataset, version, preprocessing, metrics, parity, onnx_sha256, weights_sha256) -> dict:
    """The card of a trained model (docs/card.md): one table input, one labelled output, and the
    forward section for the NumPy forward propagation of its Dense layers."""
    features = len(dataset.features)
    outputs = spec["layers"][-1]["units"]
    return {
        "name": spec["name"],
        "version": version,
        "description": spec["description"],
        "platform": "onnx_onnxv1",
        "source": {"kind": "trained", "file": None},
        "inputs": [{"name": spec["input"], "datatype": "FP32", "shape": [-1, features],
                    "features": list(dataset.features)}],
        "outputs": [{"name": spec["output"], "datatype": "FP32", "shape": [-1, outputs],
                     "labels": list(dataset.labels)}],
        "forward": {
            "input": spec["input"],
            "output": spec["output"],
            "preprocessing": preprocessing,
            "layers": [
                {"name": layer["name"], "units": layer["units"], "activation": layer["activation"]}
                for layer in spec["layers"]
            ],
        },
        "parity": {"reference": "keras", "data": "test split", "rows": len(dataset.test.y),
                   "max_abs_difference": parity, "tolerance": TOLERANCE},
        "metrics": metrics,
        "dataset": dataset.fingerprint(),
        "training": spec["training"],
        "files": {
            "model.onnx": {"sha256": onnx_sha256},
            "weights.npz": {"sha256": weights_sha256},
        },
        "opset": OPSET,
        "libraries": libraries(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def libraries() -> dict:
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def staging_dir(model_root: Path) -> Path:
    """A hidden folder beside the versions; the registry ignores names that are not integers."""
    model_root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=model_root))


def write_version(
    repository: Path, spec: dict, dataset: Dataset, graph: onnx.ModelProto,
    preprocessing: dict, weights: dict, metrics: dict, parity: float, version: int | None = None,
) -> Path:
    """Write model.onnx, weights.npz and card.json, then rename the folder into place.

    A run that fails before the rename leaves no version behind, only nothing.
    """
    model_root = repository / spec["name"]
    staging = staging_dir(model_root)
    try:
        onnx.save(graph, staging / "model.onnx")
        np.savez(staging / "weights.npz", **weights)
        version = version or next_version(model_root)
        document = card(spec, dataset, version, preprocessing, metrics, parity,
                        sha256(staging / "model.onnx"), sha256(staging / "weights.npz"))
        (staging / "card.json").write_text(json.dumps(document, indent=2) + "\n")
        os.chmod(staging, 0o755)
        target = model_root / str(version)
        staging.rename(target)  # atomic; refuses to replace a non-empty version
        return target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
