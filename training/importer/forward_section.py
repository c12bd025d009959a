"""The card's forward section and weights.npz, for a Keras model the NumPy forward propagation
can run.

Only a plain stack of Dense layers with activations among sigmoid, relu, linear and softmax on
one 2-D float input qualifies, optionally led by a Rescaling (scalar scale and offset) or a
Normalization layer, recorded as the card's `rescale` or `standardize` preprocessing exactly as
training/fit.py records a trained model's. weights.npz holds W1, b1, ..., W as inputs x units.
The section is checked with modelcard.forward.Network against onnxruntime before anything is
published.
"""

from __future__ import annotations

import numpy as np

from training import card
from training.importer.loaded import Loaded
from training.importer.parity import compare

FORWARD_ACTIVATIONS = ("sigmoid", "relu", "linear", "softmax")


def extract(loaded: Loaded) -> tuple[dict, dict[str, np.ndarray]] | None:
    """The forward section and its weights, for a plain stack of Dense layers; else None."""
    import keras

    from training import fit

    model = loaded.model
    if model is None or len(loaded.inputs) != 1 or len(loaded.outputs) != 1:
        return None
    (source,), (target,) = loaded.inputs, loaded.outputs
    if source.dtype != np.float32 or len(source.shape) != 2 or source.shape[1] < 1 \
            or source.shape[0] != -1:
        return None
    layers = dense_chain(model)
    if not layers:
        return None
    preprocessing = {"type": "none"}
    features = source.shape[1]
    if isinstance(layers[0], keras.layers.Rescaling):
        scale, offset = np.asarray(layers[0].scale), np.asarray(layers[0].offset)
        if scale.size != 1 or offset.size != 1:
            return None
        preprocessing = fit.rescaling_parameters(layers[0])
        layers = layers[1:]
    elif isinstance(layers[0], keras.layers.Normalization):
        if layers[0].invert or np.asarray(layers[0].mean).size not in (1, features):
            return None
        preprocessing = fit.normalization_parameters(layers[0])
        for key in ("mean", "std"):  # one value per feature, as the card records it
            preprocessing[key] = np.broadcast_to(np.asarray(preprocessing[key], np.float32),
                                                 (features,)).tolist()
        layers = layers[1:]
    if not layers:
        return None
    table, weights = [], {}
    for number, layer in enumerate(layers, start=1):
        if type(layer) is not keras.layers.Dense or getattr(layer, "quantization_mode", None):
            return None
        activation = keras.activations.serialize(layer.activation)
        if activation not in FORWARD_ACTIVATIONS:
            return None
        W = np.asarray(layer.kernel, dtype=np.float32)
        b = np.asarray(layer.bias, dtype=np.float32) if layer.use_bias else np.zeros(W.shape[1], np.float32)
        weights[f"W{number}"], weights[f"b{number}"] = W, b
        table.append({"name": layer.name, "units": int(W.shape[1]), "activation": activation})
    return card.forward_entry(source.name, target.name, preprocessing, table), weights


def dense_chain(model) -> list | None:
    """The layers from the model's input to its output when they form one chain (each takes the
    previous one's output, one float32 tensor in and one out, no layer twice), in order; else None."""
    layers, tensor = [], model.outputs[0]
    while tensor is not model.inputs[0]:
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        layer, node_index, _ = history
        node = layer._inbound_nodes[node_index]
        if len(node.input_tensors) != 1 or len(node.output_tensors) != 1 or \
                getattr(layer, "compute_dtype", None) != "float32" or \
                any(layer is seen for seen in layers) or len(layers) > 1000:
            return None
        layers.append(layer)
        tensor = node.input_tensors[0]
    return layers[::-1]


def check(loaded: Loaded, section: dict, weights: dict, feeds: dict, answers: dict,
          tolerance: float) -> float:
    """modelcard.forward's NumPy network against onnxruntime, on the comparison inputs."""
    from modelcard import forward

    network = forward.Network({"forward": section}, forward.layers_from(section, weights))
    predicted = {section["output"]: network.predict(feeds[section["input"]])}
    differences = compare(loaded, predicted, answers, tolerance, "the NumPy forward section")
    return differences[section["output"]]
