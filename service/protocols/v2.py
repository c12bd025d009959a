"""Open Inference Protocol v2 (KServe / Triton) over REST, with the binary tensor data extension.

Binary extension: when the request carries the header Inference-Header-Content-Length, the
body is that many bytes of JSON followed by the raw tensors of the inputs whose
parameters.binary_data_size is set, in the order of "inputs". Outputs are returned as raw
bytes when the request's parameters.binary_data_output is true or an output's
parameters.binary_data is true; the response then carries the same header.
"""

from __future__ import annotations

import re

import orjson
from flask import Blueprint, Response, request

from service import __version__
from service.errors import BadRequest
from service.protocols.common import (
    check_content_type,
    infer,
    json_response,
    parse_json,
    registry,
    resolve,
    settings,
)
from service.tensors import fit_to_model, from_bytes, from_json, may_hold_booleans

HEADER_LENGTH = "Inference-Header-Content-Length"
DIGITS = re.compile(r"[0-9]{1,12}")
blueprint = Blueprint("v2", __name__)


@blueprint.get("/v2")
def server_metadata():
    return json_response({"name": "onnx-serving", "version": __version__,
                          "extensions": ["binary_tensor_data"]})


@blueprint.get("/v2/health/live")
def live():
    return json_response({"live": True})


@blueprint.get("/v2/health/ready")
def ready():
    """200 when every model has a version to serve (see ModelRegistry.ready), else 503."""
    models = registry()
    answer = {"ready": models.ready}
    if models.refused():
        answer["refused_versions"] = models.refused()
    if models.ready:
        return json_response(answer)
    answer["error"] = models.repository_error or "models with no version to serve: " + "; ".join(
        models.unservable())
    return json_response(answer, status=503)


def tensor_metadata(tensors: list[dict]) -> list[dict]:
    return [{"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]} for t in tensors]


@blueprint.get("/v2/models/<name>")
@blueprint.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    model = resolve(name, version, "v2")
    loaded = sorted(registry().models.get(name, {}))
    card = model.card
    return json_response({
        "name": model.name,
        "versions": [str(v) for v in loaded],
        "platform": "onnx_onnxv1",
        "inputs": tensor_metadata(card["inputs"]),
        "outputs": tensor_metadata(card["outputs"]),
        # Beyond the spec: what a client needs to build inputs and read outputs.
        "parameters": {
            "version": str(model.version),
            "description": card["description"],
            "task": card["task"],
            "features": card["features"],
            "labels": card["labels"],
            "layers": card["layers"],
            "metrics": card["metrics"],
        },
    })


@blueprint.get("/v2/models/<name>/ready")
@blueprint.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    model = resolve(name, version, "v2")  # 404 unknown, 503 not loaded
    return json_response({"name": model.name, "version": str(model.version), "ready": True})


@blueprint.post("/v2/models/<name>/infer")
@blueprint.post("/v2/models/<name>/versions/<version>/infer")
def model_infer(name: str, version: str | None = None):
    model = resolve(name, version, "v2")
    check_content_type("application/json", "application/octet-stream")
    body = request.get_data(cache=False)
    header, binary = split_body(body)
    document = parse_json(header)
    x = decode_input(document, model, binary, may_hold_booleans(body))
    wanted = requested_outputs(document, model)
    results = infer(model, x)
    return encode_response(document, model, results, wanted)


def split_body(body: bytes) -> tuple[memoryview, memoryview]:
    view = memoryview(body)
    raw = request.environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH")
    if raw is None:
        return view, view[len(view):]
    if not DIGITS.fullmatch(raw) or not 0 < int(raw) <= len(body):
        raise BadRequest(f"header {HEADER_LENGTH} must be an integer between 1 and the body "
                         f"length {len(body)}, got {raw!r}")
    return view[: int(raw)], view[int(raw):]


def decode_input(document: dict, model, binary: memoryview, check_booleans: bool):
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("field 'inputs' must be a non-empty array of tensors")
    if "id" in document and not isinstance(document["id"], str):
        raise BadRequest("field 'id' must be a string")
    found = None
    offset = 0
    for index, tensor in enumerate(inputs):
        where = f"inputs[{index}]"
        if not isinstance(tensor, dict):
            raise BadRequest(f"{where} must be an object with name, shape, datatype and data")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"{where}.name must be a string")
        where = f"{where} {name!r}"
        if name != model.input_name:
            raise BadRequest(f"{where}: unknown input; model {model.name!r} takes "
                             f"{model.input_name!r}")
        if found is not None:
            raise BadRequest(f"{where}: input given twice")
        for key in ("shape", "datatype"):
            if key not in tensor:
                raise BadRequest(f"{where}: field '{key}' is missing")
        parameters = tensor.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise BadRequest(f"{where}.parameters must be an object")
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"{where}: parameters.binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise BadRequest(f"{where}: binary_data_size {size} runs past the end of the body")
            if "data" in tensor:
                raise BadRequest(f"{where}: give either data or parameters.binary_data_size, not both")
            found = from_bytes(binary[offset:offset + size], tensor["datatype"], tensor["shape"], where)
            offset += size
        elif "data" in tensor:
            found = from_json(tensor["data"], tensor["datatype"], tensor["shape"], where,
                              check_booleans)
        else:
            raise BadRequest(f"{where}: field 'data' is missing")
    if offset != len(binary):
        raise BadRequest(f"the body has {len(binary) - offset} bytes of binary data that no input claims")
    if found is None:  # unreachable while models take one input, kept for clarity of the error
        raise BadRequest(f"missing input {model.input_name!r}")
    return fit_to_model(found, model, settings().max_batch, f"input {model.input_name!r}")


def requested_outputs(document: dict, model) -> dict[str, bool]:
    """Output name -> whether to send it as binary."""
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("field 'parameters' must be an object")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BadRequest("parameters.binary_data_output must be true or false")
    outputs = document.get("outputs")
    if outputs is None:
        return {name: binary_default for name in model.output_names}
    if not isinstance(outputs, list):
        raise BadRequest("field 'outputs' must be an array of {\"name\": ...} objects")
    wanted = {}
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise BadRequest(f"outputs[{index}] must be an object with a string 'name'")
        name = output["name"]
        if name not in model.output_names:
            raise BadRequest(f"outputs[{index}]: unknown output {name!r}; model {model.name!r} "
                             f"gives {', '.join(repr(n) for n in model.output_names)}")
        options = output.get("parameters") or {}
        binary = options.get("binary_data", binary_default) if isinstance(options, dict) else None
        if not isinstance(binary, bool):
            raise BadRequest(f"outputs[{index}].parameters.binary_data must be true or false")
        wanted[name] = binary
    return wanted


def encode_response(document: dict, model, results: dict, wanted: dict[str, bool]) -> Response:
    response = {"model_name": model.name, "model_version": str(model.version)}
    if "id" in document:
        response["id"] = document["id"]
    tensors, blobs = [], []
    for name, binary in wanted.items():
        values = results[name]
        tensor = {"name": name, "datatype": "FP32", "shape": list(values.shape)}
        if binary:
            blob = values.astype("<f4", copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = values.ravel()
        tensors.append(tensor)
    response["outputs"] = tensors
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return Response(header, mimetype="application/json")
    reply = Response(b"".join([header, *blobs]), mimetype="application/octet-stream")
    reply.headers[HEADER_LENGTH] = str(len(header))
    return reply
