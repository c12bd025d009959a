"""Reading a Keras 3 `.keras` file or a legacy Keras `.h5` file.

keras.saving.load_model with compile=False and safe_mode=True: a Lambda layer's Python code is
refused, never run. The signature is the model's: its inputs' names (a dict input's keys), its
outputs named after the layers that make them (a dict output's keys), every dimension Keras
leaves open dynamic, and for an integer input that feeds an Embedding the range of its vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training import one_line, quiet
from training.importer.loaded import (
    DATATYPE_OF_NAME,
    ImportRefused,
    Loaded,
    Tensor,
    declared_tensor,
    unique_names,
)


def check_h5(path: Path) -> None:
    """An HDF5 file that holds a Keras model, not only weights."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            has_model = "model_config" in h5.attrs
    except OSError:
        raise ImportRefused(f"{path.name}: not an HDF5 file") from None
    if not has_model:
        raise ImportRefused(f"{path.name}: an HDF5 file without a Keras model in it (weights only?)")


def load_keras(path: Path, fmt: str) -> Loaded:
    import keras

    try:
        with quiet.python_logs():
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, TypeError, KeyError, OSError, ...
        raise ImportRefused(f"{path.name}: Keras cannot load it ({one_line(error)})") from None
    if not isinstance(model, keras.Model):
        raise ImportRefused(f"{path.name}: holds a {type(model).__name__}, not a Keras model")
    try:
        tensors = model.inputs
    except (AttributeError, ValueError):
        tensors = None
    if not tensors:
        raise ImportRefused(f"{path.name}: a subclassed model without a graph of layers; save it "
                            "as a functional or Sequential model")
    sequential = isinstance(model, keras.Sequential)
    in_structure = tensors[0] if sequential else model.input
    out_structure = model.outputs[0] if sequential else model.output

    if isinstance(in_structure, dict):
        in_names = keras.tree.flatten({key: key for key in in_structure})
    else:
        in_names = [tensor.name for tensor in tensors]
    if isinstance(out_structure, dict):
        out_names = keras.tree.flatten({key: key for key in out_structure})
    else:  # the layer that makes each output
        out_names = [tensor._keras_history[0].name for tensor in model.outputs]
        out_names = disambiguate(out_names)
    ranges = embedding_ranges(model, tensors)
    inputs = [keras_tensor(path, "input", name, tensor, ranges.get(id(tensor)))
              for name, tensor in zip(in_names, tensors, strict=True)]
    outputs = [keras_tensor(path, "output", name, tensor)
               for name, tensor in zip(out_names, model.outputs, strict=True)]
    unique_names(path.name, inputs, outputs)

    def call(*arguments):
        x = keras.tree.pack_sequence_as(in_structure, list(arguments))
        y = model(x, training=False)
        return dict(zip(out_names, keras.tree.flatten(y), strict=True))

    return Loaded(path, fmt, inputs, outputs, call, model)


def disambiguate(names: list[str]) -> list[str]:
    """A layer with several outputs (an RNN returning its state) names them name, name_1, ..."""
    seen: dict[str, int] = {}
    result = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        result.append(name if count == 0 else f"{name}_{count}")
    return result


def keras_tensor(path: Path, role: str, name: str, tensor, bounds=None) -> Tensor:
    import keras

    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if getattr(tensor, "sparse", False) or getattr(tensor, "ragged", False):
        raise ImportRefused(f"{path.name}: {role} {name!r} is a sparse or ragged tensor; "
                            "the card serves dense tensors only")
    return declared_tensor(path.name, role, name, dtype, f"dtype {dtype}", tensor.shape,
                           string=dtype == "string", bounds=bounds)


def embedding_ranges(model, tensors) -> dict[int, tuple[int, int]]:
    """[0, input_dim - 1] for each integer model input an Embedding layer reads directly (the
    smallest vocabulary when several do), keyed by the input tensor's id."""
    import keras

    ranges: dict[int, tuple[int, int]] = {}
    embeddings = [layer for layer in model.layers if isinstance(layer, keras.layers.Embedding)]
    for tensor in tensors:
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if dtype not in DATATYPE_OF_NAME or np.dtype(dtype).kind not in "iu":
            continue
        for layer in embeddings:
            if any(x is tensor for node in layer._inbound_nodes for x in node.input_tensors):
                high = int(layer.input_dim) - 1
                ranges[id(tensor)] = (0, min(high, ranges.get(id(tensor), (0, high))[1]))
    return ranges
