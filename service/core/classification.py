"""Triton's classification extension: an output asked for with the parameter `classification: k`
comes back as its k highest-valued classes instead of its values: a hook of the data plane
(service/core/hooks.py).

Each row of the output (every dimension but the last, whose entries are the classes the card
labels) becomes k BYTES strings "<value>:<index>:<label>", highest value first: an output of
shape [batch, n] becomes [batch, k], one of shape [n] becomes [k]. As in Triton, k larger
than n gives all n classes, and values are written as C++'s std::to_string writes them (six
decimals for floats, "0.953125"; integers as they are). Ties go to the lower index (Triton
leaves their order open) and NaN ranks last.
"""

from __future__ import annotations

import numpy as np

from service.core.errors import BadRequest
from service.core.hooks import Hook
from service.core.types import Inference
from service.repository.version_folder import LoadedModel

PARAMETER = "classification"
JSON_KINDS = {str: "a string", list: "an array", dict: "an object", type(None): "null"}


class Classification(Hook):
    """The data plane's hook: the counts are checked before the run, the classes ranked after it."""

    def before_run(self, inference: Inference) -> None:
        counts = requested_counts(inference.model, inference.request.outputs)
        if counts:
            inference.notes[PARAMETER] = counts

    def after_run(self, inference: Inference) -> None:
        outputs = inference.response.outputs
        for name, count in inference.notes.get(PARAMETER, {}).items():
            outputs[name] = top_classes(outputs[name], count, inference.model.card.output(name).labels)


def requested_counts(model: LoadedModel, requested) -> dict[str, int]:
    """Output name -> k, for the outputs asked for as classes, or a 400 naming the output and why
    it cannot be classified. `requested` are outputs already checked to exist."""
    counts = {}
    for index, output in enumerate(requested or ()):
        if PARAMETER not in output.parameters:
            continue
        where = f"outputs[{index}] {output.name!r}"
        count = output.parameters[PARAMETER]
        if type(count) is not int or count < 1:  # a bool is an int to Python, not a count
            raise BadRequest(f"{where}: parameters.{PARAMETER} must be a positive integer (how many "
                             f"classes to return), got {_described(count)}")
        spec = model.card.output(output.name)
        if spec.dtype.kind not in "iuf":
            raise BadRequest(f"{where}: classification ranks numbers, and this output gives "
                             f"{spec.datatype}")
        if not spec.labels:
            raise BadRequest(f"{where}: classification needs class labels, and the card of model "
                             f"{model.name!r} has none for this output")
        if spec.binary_classes:
            raise BadRequest(f"{where}: this output gives one probability per row (of "
                             f"{spec.labels[1]!r} against {spec.labels[0]!r}), not one score per "
                             "class; classification ranks scores per class")
        counts[output.name] = count
    return counts


def top_classes(values: np.ndarray, count: int, labels: tuple[str, ...]) -> np.ndarray:
    """The `count` highest-valued classes of each row of `values` (classes on the last axis),
    as an object array of UTF-8 "<value>:<index>:<label>" bytes (the BYTES datatype)."""
    classes = values.shape[-1]
    ranked = np.nan_to_num(values, nan=-np.inf) if values.dtype.kind == "f" else values
    # A stable sort of the reversed rows, reversed back: descending, the lower index first on ties.
    order = classes - 1 - np.argsort(ranked[..., ::-1], axis=-1, kind="stable")[..., ::-1]
    order = order[..., :min(count, classes)]
    top = np.take_along_axis(values, order, axis=-1)
    number = "%f" if values.dtype.kind == "f" else "%d"
    strings = [f"{number % value}:{index}:{labels[index]}".encode()
               for value, index in zip(top.flat, order.flat, strict=True)]
    return np.array(strings, dtype=object).reshape(order.shape)


def _described(value) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return str(value)
    return JSON_KINDS.get(type(value), type(value).__name__)
