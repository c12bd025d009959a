"""The data plane: protocol-free inference over the loaded registry.

A codec turns wire bytes into an `InferenceRequest`; the data plane resolves the model, checks
every input against the card's signature (names, datatypes, shapes with -1, the batch limit),
runs onnxruntime, records the inference metrics, ranks the outputs asked for as classes
(service/core/classification.py) and returns an `InferenceResponse`, which the codec encodes.
Errors are `service.core.errors` exceptions that carry their status; each transport maps them once.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from modelcard.card import TensorSpec
from service.core import classification, metrics
from service.core.errors import BadRequest, PayloadTooLarge, quote
from service.core.tensors import conform
from service.core.types import InferenceRequest, InferenceResponse, RequestedOutput
from service.repository.registry import ModelRegistry
from service.repository.version_folder import LoadedModel
from service.settings import Settings

log = logging.getLogger(__name__)


class DataPlane:
    def __init__(self, registry: ModelRegistry, settings: Settings):
        self.registry = registry
        self.settings = settings

    def model(self, name: str, version: str | int | None = None) -> LoadedModel:
        """The model asked for: 404 unknown, 503 not loaded."""
        return self.registry.get(name, version)

    def infer(self, model: LoadedModel, request: InferenceRequest) -> InferenceResponse:
        started = time.perf_counter()
        feeds = self.check_inputs(model, request.inputs)
        wanted = self.check_outputs(model, request.outputs)
        classes = classification.requested_counts(model, request.outputs)
        response = self.run(model, request, feeds, wanted, started)
        for name, count in classes.items():
            response.outputs[name] = classification.top_classes(response.outputs[name], count,
                                                                model.card.output(name).labels)
        return response

    def explain(self, model: LoadedModel, request: InferenceRequest) -> tuple[InferenceResponse, list]:
        """onnxruntime's answer and the NumPy forward propagation's activations a1 .. aL."""
        if model.network is None:
            raise BadRequest(f"model {model.name!r} has no NumPy forward propagation (its card has no "
                             "forward section): :explain serves plain stacks of Dense layers")
        forward = model.card.forward
        started = time.perf_counter()
        feeds = self.check_inputs(model, request.inputs)
        response = self.run(model, request, feeds, [forward["output"]], started)
        return response, model.network.activations(feeds[forward["input"]])[1:]

    def run(self, model: LoadedModel, request: InferenceRequest, feeds: dict, wanted: list[str],
            checking_since: float):
        """onnxruntime on checked feeds; `checking_since` is when checking the inputs began."""
        rows = self.rows(model, feeds)
        started = time.perf_counter()
        try:
            results = model.infer(feeds, wanted)
        except Exception as error:  # onnxruntime refuses values the signature cannot rule out
            message = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            log.warning("model %s version %s could not run a request: %s", model.name, model.version,
                        message)
            raise BadRequest(f"model {model.name!r} could not run on these inputs: {message}") from None
        metrics.observe_inference(model.name, str(model.version), rows, started - checking_since,
                                  time.perf_counter() - started)
        return InferenceResponse(model, results, request.id, request.parameters)

    def check_inputs(self, model: LoadedModel, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        card = model.card
        unknown = [name for name in given if card.input(name) is None]
        if unknown:
            raise BadRequest(f"input {quote(unknown[0])}: unknown input; model {model.name!r} takes "
                             f"{', '.join(map(repr, card.input_names))}")
        missing = [name for name in card.input_names if name not in given]
        if missing:
            raise BadRequest(f"missing input {', '.join(map(repr, missing))}; model {model.name!r} "
                             f"takes {', '.join(map(repr, card.input_names))}")
        feeds = {}
        for spec in card.inputs:
            where = f"input {spec.name!r}"
            values = given[spec.name]
            self.check_shape(values.shape, spec, where)
            feeds[spec.name] = conform(values, spec, where)
        return feeds

    def check_shape(self, shape: tuple[int, ...], spec: TensorSpec, where: str) -> None:
        if len(shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)):
            raise BadRequest(f"{where}: shape {list(shape)} does not match the model's "
                             f"{list(spec.shape)}")
        if spec.batched:
            if shape[0] == 0:
                raise BadRequest(f"{where}: the batch is empty")
            if shape[0] > self.settings.max_batch:
                raise PayloadTooLarge(f"{where}: batch of {shape[0]} rows is over the limit of "
                                      f"{self.settings.max_batch}")

    @staticmethod
    def rows(model: LoadedModel, feeds: dict[str, np.ndarray]) -> int:
        """The batch size: the same first dimension for every batched input."""
        sizes = {feeds[spec.name].shape[0] for spec in model.card.inputs if spec.batched}
        if len(sizes) > 1:
            raise BadRequest(f"the inputs disagree on the batch size: {sorted(sizes)}")
        return sizes.pop() if sizes else 1

    @staticmethod
    def check_outputs(model: LoadedModel, requested: list[RequestedOutput] | None) -> list[str]:
        names = model.card.output_names
        if requested is None:
            return list(names)
        wanted = []
        for index, output in enumerate(requested):
            if output.name not in names:
                raise BadRequest(f"outputs[{index}]: unknown output {quote(output.name)}; model "
                                 f"{model.name!r} gives {', '.join(map(repr, names))}")
            if output.name in wanted:
                raise BadRequest(f"outputs[{index}]: output {output.name!r} asked for twice")
            wanted.append(output.name)
        return wanted
