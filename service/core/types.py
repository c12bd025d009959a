"""The protocol-free request and response: what a codec decodes from the wire and what the data
plane answers (service/core/dataplane.py), for REST and gRPC alike; and the call and the run of a
model that the data plane's hooks see."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.repository.version_folder import LoadedModel


@dataclass
class RequestedOutput:
    name: str
    parameters: dict = field(default_factory=dict)


@dataclass
class InferenceRequest:
    inputs: dict[str, np.ndarray]  # as decoded, in the datatype the client declared
    outputs: list[RequestedOutput] | None = None  # None: every output
    id: str | None = None
    parameters: dict = field(default_factory=dict)


@dataclass
class InferenceResponse:
    model: LoadedModel
    outputs: dict[str, np.ndarray]  # in the order asked for; BYTES as object arrays of bytes
    id: str | None = None
    parameters: dict = field(default_factory=dict)


@dataclass
class Call:
    """One call to the data plane, as its transport made it: what the request metrics count.

    The transport makes it when the request arrives and hands it to the data plane's model
    operations, which name the model in it; when the answer leaves, the transport reports its
    status to `DataPlane.finish`. Calls that never named a model (health, metadata of the
    server, the index) are not counted."""
    protocol: str  # v2, tfserving, explain, grpc
    started: float = field(default_factory=time.perf_counter)
    inference: bool = False  # an inference call: counted in the statistics too
    counted: bool = False  # a model was asked for
    model: str = ""  # the model and version, once resolved
    version: str = ""
    deadline: float | None = None  # the client's, on time.perf_counter()'s clock (a gRPC deadline)


@dataclass
class Inference:
    """One run of a model, as the hooks see it (service/core/hooks.py)."""
    call: Call
    model: LoadedModel
    request: InferenceRequest
    response: InferenceResponse | None = None  # after the run
    rows: int = 0
    input_seconds: float = 0.0  # checking and converting the inputs
    run_seconds: float = 0.0  # inside onnxruntime
    notes: dict = field(default_factory=dict)  # what a hook keeps from before the run to after it
