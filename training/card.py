"""The model card (docs/card.md) as training writes it, for trained and imported models alike.

`build` lays out the fields in the card's order, adds what every card carries (the platform, the
versions of the libraries that made the model, the time) and parses the result with
modelcard.card.ModelCard.parse, as the service will: a card it would refuse is never published.
`tensor_entry`, `forward_entry` and `parity_entry` build the entries trained and imported cards
share.

A library is imported only for a card that lists it: a plain ONNX import never loads TensorFlow.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from modelcard.card import CardError, ModelCard
from training import TrainingError

PLATFORM = "onnx_onnxv1"
# How an imported model's outputs were held to its reference (training/importer/parity.py).
IMPORT_RULE = "per output: |reference - onnxruntime| <= tolerance x max(1, max |reference|)"

# The libraries that make each kind of source (the card's source.kind), in the card's order:
# {name in the card: module}. Trained models also need scikit-learn, which loads and splits the data.
_TENSORFLOW = {"tensorflow": "tensorflow", "keras": "keras", "tf2onnx": "tf2onnx"}
_ONNX = {"onnx": "onnx", "onnxruntime": "onnxruntime", "numpy": "numpy"}
LIBRARIES = {
    "trained": {**_TENSORFLOW, **_ONNX, "scikit-learn": "sklearn"},
    "keras": {**_TENSORFLOW, **_ONNX},
    "onnx": _ONNX,
}


class CardRefused(TrainingError):
    """The card would not parse; nothing is published."""


def libraries(kind: str) -> dict[str, str]:
    """The versions of the libraries that make a model of this source kind."""
    return {name: importlib.import_module(module).__version__ for name, module in LIBRARIES[kind].items()}


def tensor_entry(name: str, datatype: str, shape: Sequence[int], *, features: Iterable[Mapping] = (),
                 bounds: Sequence[int] | None = None, labels: Iterable[str] | None = ()) -> dict:
    """One entry of `inputs` or `outputs`: features (a table's columns), range (an integer input's
    [low, high]) and labels (an output's classes) only when there are some."""
    entry = {"name": name, "datatype": datatype, "shape": list(shape)}
    if features := list(features):
        entry["features"] = features
    if bounds is not None:
        entry["range"] = list(bounds)
    if labels := list(labels or ()):
        entry["labels"] = labels
    return entry


def forward_entry(input_name: str, output_name: str, preprocessing: Mapping,
                  layers: Iterable[Mapping]) -> dict:
    """The section modelcard.forward runs: the tensors it reproduces, the preprocessing before the
    first layer, and the Dense layers' table (weights.npz holds their W1, b1, W2, b2, ...)."""
    return {
        "input": input_name,
        "output": output_name,
        "preprocessing": preprocessing,
        "layers": [{"name": layer["name"], "units": layer["units"], "activation": layer["activation"]}
                   for layer in layers],
    }


def parity_entry(reference: str | None, data: str, rows: int, max_abs_difference: float | None,
                 tolerance: float | None, outputs: Mapping[str, float] | None = None) -> dict:
    """How far onnxruntime is from the reference, on which data; an import also gives each
    output's difference, held to IMPORT_RULE."""
    entry = {"reference": reference, "data": data, "rows": rows,
             "max_abs_difference": max_abs_difference, "tolerance": tolerance}
    if outputs is not None:
        entry["rule"] = IMPORT_RULE
        entry["outputs"] = dict(outputs)
    return entry


def build(*, name: str, version: int, description: str, source: Mapping, inputs: list[dict],
          outputs: list[dict], forward: dict | None, parity: dict, metrics: Mapping, files: dict,
          opset: int, dataset: Mapping | None = None, training: Mapping | None = None) -> dict:
    """The card, checked: CardRefused when ModelCard.parse refuses it."""
    document = {
        "name": name,
        "version": version,
        "description": description,
        "platform": PLATFORM,
        "source": dict(source),
        "inputs": inputs,
        "outputs": outputs,
    }
    if forward is not None:
        document["forward"] = forward
    document.update({"parity": parity, "metrics": dict(metrics)})
    if dataset is not None:  # for people: what a trained model saw
        document["dataset"] = dict(dataset)
    if training is not None:
        document["training"] = dict(training)
    document.update({
        "files": files,
        "opset": opset,
        "libraries": libraries(source["kind"]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    try:
        ModelCard.parse(document)
    except CardError as error:
        raise CardRefused(f"the card would not parse: {error}") from None
    return document
