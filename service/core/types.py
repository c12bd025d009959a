"""The protocol-free request and response: what a codec decodes from the wire and what the data
plane answers (service/core/dataplane.py), for REST and gRPC alike."""

from __future__ import annotations

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
