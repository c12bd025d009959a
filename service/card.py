"""The model card (docs/card.md), parsed once at load into typed, immutable objects.

Everything the service needs from card.json is read here; the rest of the service uses these
objects and never a card key by string.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# The Open Inference Protocol's numeric and boolean datatypes, and their NumPy types.
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(kind) for name, kind in (
        ("BOOL", np.bool_),
        ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32), ("UINT64", np.uint64),
        ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32), ("INT64", np.int64),
        ("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64),
    )
}
DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}


class CardError(ValueError):
    """A card that cannot be served; the message names the field."""


@dataclass(frozen=True)
class Feature:
    name: str
    unit: str | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a dynamic dimension
    features: tuple[Feature, ...] = ()  # the columns of a [-1, k] input
    range: tuple[int, int] | None = None  # [low, high] for an integer input
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
    source: str  # trained, keras or onnx
    metrics: Mapping
    parity: Mapping | None
    raw: Mapping  # the whole card, for the metadata routes

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
    def parse(cls, document: Mapping) -> ModelCard:
        if not isinstance(document, Mapping):
            raise CardError("card.json must be a JSON object")
        name, version = _field(document, "name", str), _field(document, "version", int)
        files = _field(document, "files", Mapping)
        sha256 = {}
        for filename, entry in files.items():
            digest = entry.get("sha256") if isinstance(entry, Mapping) else None
            if not isinstance(digest, str):
                raise CardError(f"files.{filename}.sha256 must be a string")
            sha256[filename] = digest
        if "model.onnx" not in sha256:
            raise CardError("files must list model.onnx")
        forward = document.get("forward")
        if forward is not None:
            if not isinstance(forward, Mapping) or not isinstance(forward.get("layers"), list):
                raise CardError("forward must be an object with a layers table")
            if "weights.npz" not in sha256:
                raise CardError("a card with a forward section must list weights.npz in files")
        inputs = _tensors(document, "inputs")
        outputs = _tensors(document, "outputs")
        source = document.get("source") or {}
        return cls(
            name=name, version=version,
            description=str(document.get("description") or ""),
            inputs=inputs, outputs=outputs, files=sha256, forward=forward,
            source=str(source.get("kind", "trained")) if isinstance(source, Mapping) else "trained",
            metrics=document.get("metrics") or {},
            parity=document.get("parity"),
            raw=document,
        )


def _field(document: Mapping, key: str, kind: type):
    value = document.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CardError(f"field {key!r} is missing or not a {kind.__name__}")
    return value


def _tensors(document: Mapping, key: str) -> tuple[TensorSpec, ...]:
    entries = document.get(key)
    if not isinstance(entries, list) or not entries:
        raise CardError(f"field {key!r} must be a non-empty list of tensors")
    specs = []
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        if not isinstance(entry, Mapping):
            raise CardError(f"{where} must be an object")
        name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
        if not isinstance(name, str) or not name:
            raise CardError(f"{where}.name must be a non-empty string")
        if datatype not in DATATYPES:
            raise CardError(f"{where}.datatype {datatype!r} is not one the service serves "
                            f"({', '.join(DATATYPES)})")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
            raise CardError(f"{where}.shape must be a list of integers, -1 for a dynamic dimension")
        features = tuple(_feature(f, f"{where}.features") for f in entry.get("features") or ())
        if features and (len(shape) != 2 or shape[1] != len(features)):
            raise CardError(f"{where}: {len(features)} features need a shape [-1, {len(features)}]")
        labels = entry.get("labels") or ()
        if not all(isinstance(label, str) for label in labels):
            raise CardError(f"{where}.labels must be strings")
        if labels and not (len(labels) == 2 and shape[-1:] == [1] or shape[-1:] == [len(labels)]):
            raise CardError(f"{where}: {len(labels)} labels do not fit the last dimension of {shape}")
        bounds = entry.get("range")
        if bounds is not None and (not isinstance(bounds, list) or len(bounds) != 2
                                   or not all(isinstance(b, int | float) for b in bounds)):
            raise CardError(f"{where}.range must be [low, high]")
        specs.append(TensorSpec(name, datatype, tuple(shape), features,
                                tuple(bounds) if bounds is not None else None, tuple(labels)))
    if len({spec.name for spec in specs}) != len(specs):
        raise CardError(f"field {key!r} names a tensor twice")
    return tuple(specs)


def _feature(entry, where: str) -> Feature:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        raise CardError(f"{where}: every feature must be an object with a name")
    return Feature(entry["name"], entry.get("unit"), entry.get("min"), entry.get("max"))
