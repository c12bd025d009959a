"""Forward propagation in plain NumPy, written the way the lesson teaches it.

A neuron computes a = g(w . a_prev + b). A layer of neurons can be computed one unit at a
time (`dense_loop`) or all at once with a matrix product (`dense`). `sequential` chains the
layers of a model card, after the card's preprocessing, and returns every layer's
activations: activations[0] is the preprocessed input (the lesson's a[0]), activations[l]
is layer l's output a[l].

This module needs NumPy only, so it can check the exported ONNX files and the service
without trusting either. It computes in float64 unless told otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    # exp(-z) overflows to inf for very negative z, and 1 / (1 + inf) is the right limit, 0.
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0)


def linear(z: np.ndarray) -> np.ndarray:
    return z


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; subtracting the maximum keeps exp from overflowing."""
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


ACTIVATIONS = {"sigmoid": sigmoid, "relu": relu, "linear": linear, "softmax": softmax}


@dataclass(frozen=True)
class Layer:
    name: str
    activation: str
    W: np.ndarray  # (inputs, units): column j holds unit j's weights w_j
    b: np.ndarray  # (units,)

    @property
    def units(self) -> int:
        return self.W.shape[1]


def dense_loop(a_in: np.ndarray, W: np.ndarray, b: np.ndarray, activation: str) -> np.ndarray:
    """One layer for one example, one neuron at a time: z_j = w_j . a_in + b_j.

    The activation is applied to the whole vector z afterwards, because softmax needs
    every unit's z; for the element-wise activations this is the same as g(z_j) per unit.
    """
    units = W.shape[1]
    z = np.zeros(units, dtype=np.result_type(a_in, W))
    for j in range(units):
        w = W[:, j]
        z[j] = np.dot(w, a_in) + b[j]
    return ACTIVATIONS[activation](z)


def dense(A_in: np.ndarray, W: np.ndarray, b: np.ndarray, activation: str) -> np.ndarray:
    """One layer, vectorised: A_out = g(A_in @ W + b), for one example (1-D) or a batch (2-D)."""
    return ACTIVATIONS[activation](A_in @ W + b)


def preprocess(preprocessing: Mapping, x: np.ndarray) -> np.ndarray:
    """The card's input preprocessing, the same arithmetic as the Keras layer it came from."""
    kind = preprocessing["type"]
    dtype = x.dtype
    if kind == "standardize":  # keras.layers.Normalization: (x - mean) / std
        mean = np.asarray(preprocessing["mean"], dtype=np.float32).astype(dtype)
        std = np.asarray(preprocessing["std"], dtype=np.float32).astype(dtype)
        return (x - mean) / std
    if kind == "rescale":  # keras.layers.Rescaling: x * scale + offset
        scale = np.asarray(preprocessing["scale"], dtype=np.float32).astype(dtype)
        offset = np.asarray(preprocessing["offset"], dtype=np.float32).astype(dtype)
        return x * scale + offset
    if kind == "none":
        return x
    raise ValueError(f"unknown preprocessing type {kind!r}")


def layers_from(forward: Mapping, weights: Mapping[str, np.ndarray]) -> list[Layer]:
    """Pair the layer table of a card's forward section with W1, b1, W2, b2, ... from weights.npz;
    ValueError when an array is missing, not numbers, or of a shape that does not chain."""
    layers, inputs = [], None
    for number, spec in enumerate(forward["layers"], start=1):
        if f"W{number}" not in weights or f"b{number}" not in weights:
            raise ValueError(f"layer {number}: weights.npz lacks W{number} or b{number}")
        W, b = np.asarray(weights[f"W{number}"]), np.asarray(weights[f"b{number}"])
        if W.dtype.kind not in "fiu" or b.dtype.kind not in "fiu":
            raise ValueError(f"layer {number}: W{number} and b{number} must hold numbers")
        if W.ndim != 2 or W.shape[1] != spec["units"] or b.shape != (spec["units"],):
            raise ValueError(
                f"layer {number}: weights W{number} {W.shape} and b{number} {b.shape} "
                f"do not match the card's {spec['units']} units"
            )
        if inputs is not None and W.shape[0] != inputs:
            raise ValueError(f"layer {number}: W{number} takes {W.shape[0]} inputs, "
                             f"but layer {number - 1} has {inputs} units")
        layers.append(Layer(spec["name"], spec["activation"], W, b))
        inputs = spec["units"]
    return layers


def sequential(
    x: np.ndarray | Sequence,
    layers: Sequence[Layer],
    preprocessing: Mapping | None = None,
    *,
    vectorised: bool = True,
    dtype: type = np.float64,
) -> list[np.ndarray]:
    """Run the layers in order and return [a0, a1, ..., aL].

    x is one example (1-D) or a batch (2-D); each activation keeps that rank. With
    vectorised=False every layer goes through `dense_loop`, one example and one unit at a time.
    """
    a = np.asarray(x, dtype=dtype)
    if a.ndim not in (1, 2):
        raise ValueError(f"expected one example (1-D) or a batch (2-D), got {a.ndim}-D input")
    if preprocessing is not None:
        a = preprocess(preprocessing, a)
    activations = [a]
    for layer in layers:
        W, b = layer.W.astype(dtype), layer.b.astype(dtype)
        if vectorised:
            a = dense(a, W, b, layer.activation)
        elif a.ndim == 1:
            a = dense_loop(a, W, b, layer.activation)
        else:
            a = np.stack([dense_loop(row, W, b, layer.activation) for row in a])
        activations.append(a)
    return activations


@dataclass(frozen=True)
class Network:
    """A model directory's card and weights, ready for `sequential`: the card's `forward` section
    names the preprocessing and the layer table, weights.npz holds W1, b1, W2, b2, ..."""

    card: Mapping
    layers: list[Layer]

    @classmethod
    def load(cls, model_dir: str | Path, card: Mapping | None = None) -> Network:
        model_dir = Path(model_dir)
        if card is None:
            card = json.loads((model_dir / "card.json").read_text())
        if "forward" not in card:
            raise ValueError(f"the card of {card.get('name')!r} has no forward section")
        return cls.from_weights(card, model_dir / "weights.npz")

    @classmethod
    def from_weights(cls, card: Mapping, weights) -> Network:
        """From a card and its weights.npz: a path or a file object."""
        # allow_pickle=False: a weights file is data, never code.
        with np.load(weights, allow_pickle=False) as arrays:
            return cls(card, layers_from(card["forward"], arrays))

    @property
    def forward(self) -> Mapping:
        return self.card["forward"]

    def activations(self, x, *, vectorised: bool = True, dtype: type = np.float64):
        return sequential(
            x, self.layers, self.forward.get("preprocessing"), vectorised=vectorised, dtype=dtype
        )

    def predict(self, x, **kwargs) -> np.ndarray:
        return self.activations(x, **kwargs)[-1]
