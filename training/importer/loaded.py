"""What every step of an import shares: the loaded model (its signature, and the call that runs
it), one tensor of that signature, and the refusal."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelcard.tables import DATATYPE_OF, DATATYPES
from training import TrainingError, card

# The card's datatypes by NumPy type name: Keras and TensorFlow name their dtypes, and some of
# those names (string, bfloat16) are no NumPy type at all.
DATATYPE_OF_NAME = {dtype.name: datatype for dtype, datatype in DATATYPE_OF.items()}
CARD_DATATYPES = ", ".join(DATATYPES)  # for refusals


class ImportRefused(TrainingError):
    """The file cannot be imported as asked; the message names the file, layer or tensor."""


@dataclass(frozen=True)
class Tensor:
    """One input or output of the imported model, as the card records it."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 for a dynamic dimension
    range: tuple[int, int] | None = None  # the vocabulary of the Embedding an integer input feeds

    @property
    def datatype(self) -> str:
        return DATATYPE_OF[self.dtype]

    def describe(self) -> str:
        return f"{self.name} {self.datatype} {list(self.shape)}"

    def entry(self, labels: list[str] | None = None) -> dict:
        return card.tensor_entry(self.name, self.datatype, self.shape, bounds=self.range, labels=labels)


def declared_tensor(file: str, role: str, name: str, dtype_name: str | None, shown_type: str,
                    shape: Sequence[int | None] | None, *, string: bool = False,
                    bounds: tuple[int, int] | None = None) -> Tensor:
    """A Tensor of a datatype the card declares, None or -1 for a dynamic dimension in `shape`;
    refused for strings, other dtypes (named by `shown_type`) and an unknown rank (shape None)."""
    if string:
        raise ImportRefused(f"{file}: {role} {name!r} is a string tensor; the card serves "
                            f"numbers and booleans only ({CARD_DATATYPES})")
    if dtype_name not in DATATYPE_OF_NAME:
        raise ImportRefused(f"{file}: {role} {name!r} has {shown_type}, which the card cannot "
                            f"declare ({CARD_DATATYPES})")
    if shape is None:
        raise ImportRefused(f"{file}: {role} {name!r} has no known rank")
    return Tensor(name, np.dtype(dtype_name), tuple(-1 if d is None else int(d) for d in shape), bounds)


def unique_names(file: str, inputs: list[Tensor], outputs: list[Tensor]) -> None:
    names = [t.name for t in inputs + outputs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ImportRefused(f"{file}: tensor names {twice} are used twice; the card needs "
                            "distinct input and output names")


@dataclass
class Loaded:
    """A model file, loaded: its signature, and for Keras and SavedModels the call that runs it."""

    path: Path
    format: str  # keras, h5, savedmodel, onnx
    inputs: list[Tensor]
    outputs: list[Tensor]
    call: Callable | None = None  # (*tensors in input order) -> {output name: tensor}
    model: object | None = None  # the keras.Model, when there is one
    keep: list = field(default_factory=list)  # objects the call needs alive (a loaded SavedModel)

    @property
    def kind(self) -> str:
        """The card's source.kind: keras for anything TensorFlow ran, onnx for a plain ONNX file."""
        return "onnx" if self.format == "onnx" else "keras"

    @property
    def reference(self) -> str | None:
        """What parity compares onnxruntime with: None for a plain ONNX file."""
        return {"keras": "keras", "h5": "keras", "savedmodel": "tensorflow"}.get(self.format)
