"""Open Inference Protocol v2 over REST: JSON tensors and the binary tensor data extension.

Binary extension: when the request carries the header Inference-Header-Content-Length, the
body is that many bytes of JSON followed by the raw tensors of the inputs whose
parameters.binary_data_size is set, in the order of "inputs". Outputs are returned as raw
bytes when the request's parameters.binary_data_output is true or an output's
parameters.binary_data is true; the response then carries the same header.
"""

from __future__ import annotations

import re

import numpy as np

from modelcard.card import TensorSpec
from service.core.errors import BadRequest, quote
from service.core.tensors import datatype_of, from_bytes, from_json, may_hold_booleans, to_bytes
from service.core.types import InferenceRequest, InferenceResponse, RequestedOutput
from service.rest.codecs.json import dumps, parse_object

HEADER_LENGTH = "Inference-Header-Content-Length"
DIGITS = re.compile(r"[0-9]{1,12}")


def split_body(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    """The JSON part and the binary part of a body."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view):]
    if not DIGITS.fullmatch(header_length) or not 0 < int(header_length) <= len(body):
        raise BadRequest(f"header {HEADER_LENGTH} must be an integer between 1 and the body "
                         f"length {len(body)}, got {quote(header_length)}")
    return view[: int(header_length)], view[int(header_length):]


def decode_request(body: bytes, header_length: str | None = None) -> InferenceRequest:
    header, binary = split_body(body, header_length)
    document = parse_object(header)
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("field 'id' must be a string")
    parameters = _parameters(document.get("parameters"), "parameters")
    if not isinstance(parameters.get("binary_data_output", False), bool):
        raise BadRequest("parameters.binary_data_output must be true or false")
    return InferenceRequest(
        inputs=_inputs(document.get("inputs"), binary, may_hold_booleans(body)),
        outputs=_outputs(document.get("outputs")),
        id=request_id,
        parameters=parameters,
    )


def _parameters(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be an object")
    return value


def _inputs(inputs, binary: memoryview, check_booleans: bool) -> dict[str, np.ndarray]:
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("field 'inputs' must be a non-empty array of tensors")
    decoded: dict[str, np.ndarray] = {}
    offset = 0
    for index, tensor in enumerate(inputs):
        where = f"inputs[{index}]"
        if not isinstance(tensor, dict):
            raise BadRequest(f"{where} must be an object with name, shape, datatype and data")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"{where}.name must be a string")
        where = f"{where} {quote(name)}"
        if name in decoded:
            raise BadRequest(f"{where}: input given twice")
        for key in ("shape", "datatype"):
            if key not in tensor:
                raise BadRequest(f"{where}: field '{key}' is missing")
        size = _parameters(tensor.get("parameters"), f"{where}.parameters").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"{where}: parameters.binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise BadRequest(f"{where}: binary_data_size {size} runs past the end of the body")
            if "data" in tensor:
                raise BadRequest(f"{where}: give either data or parameters.binary_data_size, not both")
            decoded[name] = from_bytes(binary[offset:offset + size], tensor["datatype"],
                                       tensor["shape"], where)
            offset += size
        elif "data" in tensor:
            decoded[name] = from_json(tensor["data"], tensor["datatype"], tensor["shape"], where,
                                      check_booleans)
        else:
            raise BadRequest(f"{where}: field 'data' is missing")
    if offset != len(binary):
        raise BadRequest(f"the body has {len(binary) - offset} bytes of binary data that no input claims")
    return decoded


def _outputs(outputs) -> list[RequestedOutput] | None:
    if outputs is None or outputs == []:
        return None
    if not isinstance(outputs, list):
        raise BadRequest("field 'outputs' must be an array of {\"name\": ...} objects")
    requested = []
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise BadRequest(f"outputs[{index}] must be an object with a string 'name'")
        parameters = _parameters(output.get("parameters"), f"outputs[{index}].parameters")
        if not isinstance(parameters.get("binary_data", False), bool):
            raise BadRequest(f"outputs[{index}].parameters.binary_data must be true or false")
        requested.append(RequestedOutput(output["name"], parameters))
    return requested


def binary_outputs(request: InferenceRequest, names) -> dict[str, bool]:
    """Output name -> whether to send it as raw bytes."""
    default = request.parameters.get("binary_data_output", False)
    if request.outputs is None:
        return dict.fromkeys(names, default)
    return {output.name: output.parameters.get("binary_data", default) for output in request.outputs}


def encode_response(response: InferenceResponse, binary: dict[str, bool]) -> tuple[bytes, int | None]:
    """The body, and the length of its JSON part when raw tensors follow it (else None)."""
    model = response.model
    document = {"model_name": model.name, "model_version": str(model.version)}
    if response.id is not None:
        document["id"] = response.id
    tensors, blobs = [], []
    for name, values in response.outputs.items():
        datatype = datatype_of(values)
        tensor = {"name": name, "datatype": datatype, "shape": list(values.shape)}
        if binary.get(name):
            blob = to_bytes(values)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            tensor["data"] = [item.decode() for item in values.flat]
        else:
            tensor["data"] = np.ascontiguousarray(values).ravel()
        tensors.append(tensor)
    document["outputs"] = tensors
    header = dumps(document)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def tensor_metadata(specs: tuple[TensorSpec, ...]) -> list[dict]:
    return [spec.metadata() for spec in specs]
