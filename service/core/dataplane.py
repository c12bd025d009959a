"""The data plane: every operation of the service, free of any protocol.

REST (service/rest/) and gRPC (service/grpc/) are adapters: they decode a request, call one of
these operations and encode what it returns. Server: live, readiness, metadata, the repository
index, statistics. Model: resolve, metadata, readiness, the status of its versions, infer,
explain. An inference checks every input against the card's signature (names, datatypes, shapes
with -1, the batch limit) and runs onnxruntime; everything around it, metrics, statistics and
classification, enters through hooks (service/core/hooks.py), as does what a repository refresh
loaded or unloaded. Errors are `service.core.errors` exceptions that carry their status; each
transport maps them once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from modelcard.card import TensorSpec
from service import __version__
from service.core import stats
from service.core.classification import Classification
from service.core.errors import BadRequest, ModelNotFound, PayloadTooLarge, RunOverBudget, quote
from service.core.hooks import Hook, overriding
from service.core.limits import Limits
from service.core.metrics import Metrics
from service.core.tensors import conform
from service.core.types import Call, Inference, InferenceRequest, InferenceResponse, RequestedOutput
from service.repository.registry import Change, ModelRegistry
from service.repository.sessions import over_budget
from service.repository.version_folder import LoadedModel
from service.settings import Settings

log = logging.getLogger(__name__)

SERVER_NAME = "onnx-serving"
# The protocol extensions, and the transports that carry each: statistics and the repository
# index are REST routes only, as the binary tensor format is REST's.
EXTENSIONS = {"binary_tensor_data": ("rest",), "classification": ("rest", "grpc"),
              "model_repository": ("rest",), "statistics": ("rest",)}
# What a refresh's events tell the hooks; the model's policy and misnamed folders concern no version.
EVENTS = {"loaded": "loaded", "reloaded": "loaded", "unloaded": "unloaded", "refused": "refused",
          "kept": "refused"}


@dataclass(frozen=True)
class Readiness:
    ready: bool  # the registry's readiness rule (ModelRegistry.ready)
    refused: list[str]  # broken versions of models that still serve one
    error: str | None  # why not ready


def default_hooks() -> list[Hook]:
    """Classification before metrics: a refused `classification` parameter is not counted as a run."""
    return [Classification(), Metrics()]


class DataPlane:
    def __init__(self, registry: ModelRegistry, settings: Settings, hooks: list[Hook] | None = None):
        self.registry = registry
        self.settings = settings
        self.limits = Limits(settings)
        self.hooks: list[Hook] = []
        for hook in default_hooks() if hooks is None else hooks:
            self.add_hook(hook)

    def add_hook(self, hook: Hook) -> None:
        """One more concern, after those already there (default_hooks)."""
        self.hooks.append(hook)
        self._before_run, self._after_run, self._finished = (
            overriding(self.hooks, method) for method in ("before_run", "after_run", "finished"))

    # The server

    @staticmethod
    def live() -> bool:
        return True

    def readiness(self) -> Readiness:
        registry = self.registry
        ready = registry.ready  # read once: a poll may change it meanwhile
        error = None if ready else registry.repository_error or (
            "models with no version to serve: " + "; ".join(registry.unservable()))
        return Readiness(ready, registry.refused(), error)

    @staticmethod
    def server_metadata(transport: str) -> dict:
        """Name, version and the extensions this transport carries."""
        return {"name": SERVER_NAME, "version": __version__,
                "extensions": [name for name, carriers in EXTENSIONS.items() if transport in carriers]}

    def index(self, ready_only: bool = False) -> list[tuple[str, str, bool, str]]:
        """Every folder of the repository as (model, version, ready, reason) (ModelRegistry.index)."""
        return [entry for entry in self.registry.index() if entry[2] or not ready_only]

    def statistics(self, name: str | None = None, version: str | None = None) -> dict:
        """Every loaded version of every model, of one model, or one version: 404 for an unknown
        model or version, 503 for one that is not loaded."""
        registry = self.registry
        if name is None:
            wanted = [(model, number) for model, versions in sorted(registry.models.items())
                      for number in sorted(versions)]
        elif version is None:
            registry.get(name)
            wanted = [(name, number) for number in sorted(registry.models.get(name, {}))]
        else:
            wanted = [(name, registry.get(name, version).version)]
        return stats.statistics(wanted)

    def refresh(self) -> list[Change]:
        """Read the repository again; the hooks hear of every version loaded, unloaded or refused."""
        changes = self.registry.refresh()
        for change in changes:
            event = EVENTS.get(change.event)
            if event is None or change.version is None:
                continue
            extra = (change.event == "kept",) if event == "refused" else ()
            for hook in self.hooks:
                try:
                    getattr(hook, event)(change.name, change.version, *extra)
                except Exception:  # a refresh never raises (ModelRegistry), whatever a hook does
                    log.exception("hook %s failed on %s", type(hook).__name__, change.message)
        return changes

    # A model. `call`: the transport's, when it reports the call's end (finish); none for a
    # caller that counts nothing.

    def model(self, name: str, version: str | int | None = None, call: Call | None = None) -> LoadedModel:
        """The model asked for: 404 unknown, 503 not loaded. The call counts from here on. For an
        inference call, 503 (ModelBusy) at once when the model holds all its long runs, before
        the request's body is read."""
        call = call or Call("")
        call.counted = True
        model = self.registry.get(name, version)
        call.model, call.version = model.name, str(model.version)
        if call.inference:
            self.limits.admit(model)
        return model

    def model_metadata(self, name: str, version: str | None = None,
                       call: Call | None = None) -> tuple[LoadedModel, list[int]]:
        """The model, and every loaded version of it."""
        model = self.model(name, version, call)
        return model, sorted(self.registry.models.get(model.name, {}))

    def model_ready(self, name: str, version: str | None = None, call: Call | None = None) -> str | None:
        """None when the version is served as it lies on disk; why not, when its files changed and
        were refused and the copy loaded before serves. 404 unknown, 503 not loaded."""
        return self.registry.stale(self.model(name, version, call))

    def version_status(self, name: str, version: str | None = None) -> dict[int, str | None]:
        """Each loaded (None) or refused (why) version of a model, or the one asked for."""
        versions = self.registry.status(name)
        if version is None:
            return versions
        number = self.registry.version_number(name, version)
        if number not in versions:
            raise ModelNotFound(name, number)
        return {number: versions[number]}

    def infer(self, model: LoadedModel, request: InferenceRequest,
              call: Call | None = None) -> InferenceResponse:
        started = time.perf_counter()
        inference = Inference(call or Call(""), model, request)
        feeds = self.check_inputs(model, request.inputs)
        wanted = self.check_outputs(model, request.outputs)
        return self.run(inference, feeds, wanted, started)

    def explain(self, model: LoadedModel, request: InferenceRequest,
                call: Call | None = None) -> tuple[InferenceResponse, list]:
        """onnxruntime's answer and the NumPy forward propagation's activations a1 .. aL."""
        if model.network is None:
            raise BadRequest(f"model {model.name!r} has no NumPy forward propagation (its card has no "
                             "forward section): :explain serves plain stacks of Dense layers")
        forward = model.card.forward
        started = time.perf_counter()
        feeds = self.check_inputs(model, request.inputs)
        response = self.run(Inference(call or Call(""), model, request), feeds, [forward["output"]],
                            started)
        return response, model.network.activations(feeds[forward["input"]])[1:]

    def finish(self, call: Call, status: str, succeeded: bool) -> None:
        """The transport has answered the call with `status`: the hooks hear of it."""
        if call.counted:
            for hook in self._finished:
                hook(call, status, succeeded)

    def run(self, inference: Inference, feeds: dict, wanted: list[str], checking_since: float):
        """onnxruntime on checked feeds, between the hooks; `checking_since` is when checking the
        inputs began."""
        model = inference.model
        inference.rows = self.rows(model, feeds)
        for hook in self._before_run:
            hook(inference)
        run = self.limits.start(model, inference.call, inference.request)
        started = time.perf_counter()
        try:
            results = model.infer(feeds, wanted, run and run.options)
        except Exception as error:  # onnxruntime refuses values the signature cannot rule out
            stopped = run and self.limits.stopped(run)
            if stopped:
                raise stopped from None
            if (refusal := over_budget(error, model.name)) is not None:
                raise RunOverBudget(refusal) from None
            message = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            log.warning("model %s version %s could not run a request: %s", model.name, model.version,
                        message)
            raise BadRequest(f"model {model.name!r} could not run on these inputs: {message}") from None
        finally:
            if run is not None:
                self.limits.end(run)
        inference.run_seconds = time.perf_counter() - started
        inference.input_seconds = started - checking_since
        request = inference.request
        inference.response = InferenceResponse(model, results, request.id, request.parameters)
        for hook in self._after_run:
            hook(inference)
        return inference.response

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
