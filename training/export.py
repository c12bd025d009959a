"""Export to ONNX, and write one trained version into the model repository.

`to_onnx` is the one path from TensorFlow to ONNX, for the built-in models and for imported
Keras files and SavedModels alike: tf2onnx's `convert.from_function` on a `tf.function` with a
named `input_signature` (the ONNX input names) that returns a dict (its keys become the ONNX
output names), at opset 17, then `onnx.checker` with full_check and a check that the graph has
exactly the inputs asked for. (`tf2onnx.convert.from_keras` fails on Keras 3 models.)

TensorFlow captures small eager tensors a traced function reads (Keras 3's Normalization keeps
its mean and variance in such tensors) as constants that it nevertheless lists among the
function's inputs, and tf2onnx turns every listed input into a graph input: onnxruntime would
then demand the statistics with every request. `to_onnx` captures every eager tensor as a
constant and takes those constants off the input list before conversion, so they stay
constants in the graph. The built-in models are traced from the card's preprocessing, as
constants, and their Dense layers: one input, one named output.

tf2onnx has no conversion for TensorFlow's Erfc, which tf.nn.gelu calls for the exact GELU
(Keras' `gelu` activation and layer, approximate=False by default, common in transformer
blocks); `to_onnx` converts it as 1 - Erf(x), as ONNX exports of GELU do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime
import tensorflow as tf
import tf2onnx
from tensorflow.core.function.capture import capture_container

from training import TrainingError, card, one_line
from training.data import Dataset
from training.repository import publish

OPSET = 17
# Largest |Keras - onnxruntime| allowed before a version is published (float32 arithmetic in a
# different order stays near 1e-7 for the networks here).
TOLERANCE = 1e-5


class ExportError(TrainingError):
    """The exported graph failed a check; nothing was written."""


@contextlib.contextmanager
def _eager_tensors_as_constants():
    """While tracing: capture every eager tensor as a Const op, however large (TensorFlow does so
    up to 128 elements and makes larger ones placeholders, which tf2onnx turns into inputs)."""
    threshold = capture_container._EAGER_CONST_THRESHOLD
    capture_container._EAGER_CONST_THRESHOLD = 2**62
    try:
        yield
    finally:
        capture_container._EAGER_CONST_THRESHOLD = threshold


def _erfc(ctx, node, name, args):
    """tf2onnx handler: Erfc(x) as 1 - Erf(x) (ONNX has Erf, not Erfc)."""
    erf = node.output[0]
    node.type = "Erf"
    dtype = ctx.get_dtype(node.input[0])
    one = ctx.make_const(tf2onnx.utils.make_name(f"{name}_one"),
                         np.array(1, tf2onnx.utils.map_onnx_to_numpy_type(dtype)))
    complement = ctx.insert_new_node_on_output("Sub", erf, inputs=[one.output[0], erf])
    ctx.set_dtype(complement.output[0], dtype)
    ctx.copy_shape(erf, complement.output[0])


# TensorFlow ops that tf2onnx does not convert by itself: {op type: (handler, arguments)}.
OP_HANDLERS = {"Erfc": (_erfc, [])}


def to_onnx(call: Callable[..., Mapping], input_specs: Sequence[tf.TensorSpec]) -> onnx.ModelProto:
    """Trace call(*tensors) -> {output name: tensor} and convert it to a checked ONNX graph.

    input_specs name the graph's inputs, in order, and give their dtypes and shapes (None for a
    dynamic dimension). Raises ExportError when the converter fails or the graph does not check.
    """
    signature = list(input_specs)
    function = tf.function(call, input_signature=signature)
    with _eager_tensors_as_constants():
        concrete = function.get_concrete_function(*signature)
    # Captured eager tensors are Const ops listed among the inputs: unlist them (the signature's
    # placeholders come first; variables are resource placeholders that tf2onnx freezes).
    concrete.graph.inputs[:] = [
        tensor for position, tensor in enumerate(concrete.graph.inputs)
        if position < len(signature) or tensor.op.type != "Const"
    ]
    try:
        # from_function finds the concrete function traced above (same signature).
        graph, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=OPSET,
                                                  custom_op_handlers=dict(OP_HANDLERS))
        onnx.checker.check_model(graph, full_check=True)
    except Exception as error:  # tf2onnx and onnx raise anything from ValueError to KeyError
        raise ExportError(f"the ONNX converter failed: {one_line(error)}") from None
    inputs = [i.name for i in graph.graph.input]
    expected = [spec.name for spec in signature]
    if inputs != expected:
        raise ExportError(f"the exported graph has inputs {inputs}, expected exactly {expected}")
    return graph


def onnx_graph(spec: dict, model: keras.Model, preprocessing: dict, features: int) -> onnx.ModelProto:
    dense_layers = [model.get_layer(layer["name"]) for layer in spec["layers"]]

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

    return to_onnx(serve, [tf.TensorSpec([None, features], tf.float32, name=spec["input"])])


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


def trained_card(spec: dict, dataset: Dataset, version: int, preprocessing: dict, metrics: dict,
                 parity: float, files: dict) -> dict:
    """The card of a trained model (docs/card.md): one table input, one labelled output, and the
    forward section for the NumPy forward propagation of its Dense layers."""
    return card.build(
        name=spec["name"], version=version, description=spec["description"],
        source={"kind": "trained", "file": None},
        inputs=[card.tensor_entry(spec["input"], "FP32", [-1, len(dataset.features)],
                                  features=dataset.features)],
        outputs=[card.tensor_entry(spec["output"], "FP32", [-1, spec["layers"][-1]["units"]],
                                   labels=dataset.labels)],
        forward=card.forward_entry(spec["input"], spec["output"], preprocessing, spec["layers"]),
        parity=card.parity_entry("keras", "test split", len(dataset.test.y), parity, TOLERANCE),
        metrics=metrics, dataset=dataset.fingerprint(), training=spec["training"],
        files=files, opset=OPSET,
    )


def write_version(
    repository: Path, spec: dict, dataset: Dataset, graph: onnx.ModelProto,
    preprocessing: dict, weights: dict, metrics: dict, parity: float, version: int | None = None,
) -> Path:
    """Write model.onnx, weights.npz and card.json, then rename the folder into place.

    A run that fails before the rename leaves no version behind, only nothing.
    """
    return publish(
        repository, spec["name"],
        {"model.onnx": lambda path: onnx.save(graph, path),
         "weights.npz": lambda path: np.savez(path, **weights)},
        lambda number, files: trained_card(spec, dataset, number, preprocessing, metrics, parity,
                                           files),
        version,
    )
