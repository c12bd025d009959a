"""The model card (docs/card.md), parsed once at load into typed, immutable objects.

A card is untrusted input, like a request body: `ModelCard.parse` checks it field by field
against the declared schema (modelcard/card.schema.json), then what a schema cannot say, and
raises CardError with a one-line reason. The rest of the service uses these objects and never
a card key by string.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import numpy as np

from modelcard.tables import DATATYPES

SCHEMA = json.loads((Path(__file__).with_name("card.schema.json")).read_text())
# JSON Schema counts 1.0 as an integer; a card's versions and shapes must be integers in the JSON.
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
VALIDATOR = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)(SCHEMA)
REASON_LENGTH = 200


class CardError(ValueError):
    """A card that cannot be served; the message names the field, on one line."""


@dataclass(frozen=True)
class Feature:
    name: str
    unit: str | None = None
    min: float | None = None
    max: float | None = None

    def metadata(self) -> dict:
        return {"name": self.name, "unit": self.unit, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a dynamic dimension
    features: tuple[Feature, ...] = ()  # the columns of a [-1, k] input
    range: tuple[float, float] | None = None  # [low, high] for an integer input
    labels: tuple[str, ...] = ()  # class labels of an output

    @property
    def dtype(self) -> np.dtype:
        return DATATYPES[self.datatype]

    @property
    def batched(self) -> bool:
        """Whether the first dimension is the dynamic batch dimension."""
        return bool(self.shape) and self.shape[0] == -1

    @property
    def binary_classes(self) -> bool:
        """One probability per row for labels[1], against labels[0]."""
        return len(self.labels) == 2 and self.shape[-1:] == (1,)

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: int
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: Mapping[str, str]  # file name -> sha256
    forward: Mapping | None  # the NumPy forward propagation's section, when there is one
    source: Mapping  # kind (trained, keras or onnx), file, and format for imports
    metrics: Mapping
    parity: Mapping | None
    limits: Mapping = field(default_factory=dict)  # timeout_ms, long_runs: the service's bounds

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.outputs if spec.name == name), None)

    @property
    def table_features(self) -> tuple[Feature, ...]:
        """The feature names of a model whose only input is a [-1, k] table, else ()."""
        return self.inputs[0].features if len(self.inputs) == 1 else ()

    @classmethod
    def parse(cls, document) -> ModelCard:
        check_schema(document)
        inputs = _tensors(document["inputs"], "inputs")
        outputs = _tensors(document["outputs"], "outputs")
        files = {filename: entry["sha256"] for filename, entry in document["files"].items()}
        forward = document.get("forward")
        if forward is not None:
            if "weights.npz" not in files:
                raise CardError("a card with a forward section must list weights.npz in files")
            if forward["input"] not in {spec.name for spec in inputs}:
                raise CardError("forward.input must name one of the card's inputs")
            if forward["output"] not in {spec.name for spec in outputs}:
                raise CardError("forward.output must name one of the card's outputs")
        return cls(
            name=document["name"], version=document["version"],
            description=document.get("description", ""),
            inputs=inputs, outputs=outputs, files=files, forward=forward,
            source={"kind": "trained", "file": None, **document.get("source", {})},
            metrics=document.get("metrics", {}),
            parity=document.get("parity"),
            limits=document.get("limits", {}),
        )


def check_schema(document) -> None:
    """CardError naming the first field that breaks modelcard/card.schema.json."""
    error = jsonschema.exceptions.best_match(VALIDATOR.iter_errors(document))
    if error is not None:
        where = error.json_path.removeprefix("$").removeprefix(".") or "card.json"
        raise CardError(one_line(f"{where}: {error.message}"))


def one_line(text: str) -> str:
    """A reason fit for a log line and the index: control characters escaped, cut short."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= REASON_LENGTH else text[:REASON_LENGTH - 3] + "..."


def _tensors(entries: list, key: str) -> tuple[TensorSpec, ...]:
    """The typed tensors of a schema-valid list, with the checks that span fields."""
    specs = []
    for index, entry in enumerate(entries):
        where, shape = f"{key}[{index}]", entry["shape"]
        features = tuple(Feature(**feature) for feature in entry.get("features", ()))
        if features and (len(shape) != 2 or shape[1] != len(features)):
            raise CardError(f"{where}: {len(features)} features need a shape [-1, {len(features)}]")
        labels = tuple(entry.get("labels", ()))
        if labels and not (len(labels) == 2 and shape[-1:] == [1] or shape[-1:] == [len(labels)]):
            raise CardError(f"{where}: {len(labels)} labels do not fit the last dimension of {shape}")
        bounds = entry.get("range")
        if bounds is not None and bounds[0] > bounds[1]:
            raise CardError(f"{where}.range must be [low, high] with low <= high")
        specs.append(TensorSpec(entry["name"], entry["datatype"], tuple(shape), features,
                                tuple(bounds) if bounds is not None else None, labels))
    if len({spec.name for spec in specs}) != len(specs):
        raise CardError(f"field {key!r} names a tensor twice")
    return tuple(specs)
