"""Open Inference Protocol v2 (KServe / Triton) REST routes: thin, over the v2 codec and the data
plane. Each is a function of the WSGI environ, the data plane and the path's segments; their
rules are in service/rest/routes.py."""

from __future__ import annotations

from service.core.dataplane import DataPlane
from service.core.errors import BadRequest
from service.rest import health_files
from service.rest.codecs import v2 as codec
from service.rest.codecs.json import parse_object
from service.rest.protocols.common import (
    Reply,
    body,
    call_of,
    check_content_type,
    json_reply,
)


def server_metadata(environ: dict, plane: DataPlane) -> Reply:
    return json_reply(plane.server_metadata("rest"))


def live(environ: dict, plane: DataPlane) -> Reply:
    return json_reply({"live": plane.live()})


def ready(environ: dict, plane: DataPlane) -> Reply:
    """200 when every model has a version to serve (see ModelRegistry.ready) and the service is
    not shedding load (service/rest/health_files.py), else 503."""
    status, document = health_files.readiness(plane, plane.settings.health_files)
    return json_reply(document, status=status)


def repository_index(environ: dict, plane: DataPlane) -> Reply:
    """Every version in the repository and its state (Triton's model repository extension): the
    versions the version policy leaves out are UNAVAILABLE with reason "unloaded: ...", as in
    Triton; `{"ready": true}` lists the loaded ones only."""
    raw = body(environ, plane.settings)
    document = parse_object(raw) if raw.strip() else {}
    ready_only = document.get("ready", False)
    if not isinstance(ready_only, bool):
        raise BadRequest("field 'ready' must be true or false")
    return json_reply([
        {"name": name, "version": version, "state": "READY" if ready else "UNAVAILABLE", "reason": reason}
        for name, version, ready, reason in plane.index(ready_only)
    ])


def model_metadata(environ: dict, plane: DataPlane, name: str, version: str | None = None) -> Reply:
    model, versions = plane.model_metadata(name, version, call_of(environ, "v2"))
    card = model.card
    return json_reply({
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": "onnx_onnxv1",
        "inputs": codec.tensor_metadata(card.inputs),
        "outputs": codec.tensor_metadata(card.outputs),
        # Beyond the spec: what a client needs to build inputs and read outputs.
        "parameters": {
            "version": str(model.version),
            "description": card.description,
            "source": card.source,
            "features": [feature.metadata() for feature in card.table_features] or None,
            "ranges": {spec.name: list(spec.range) for spec in card.inputs if spec.range},
            "labels": {spec.name: list(spec.labels) for spec in card.outputs if spec.labels},
            "layers": card.forward["layers"] if card.forward else None,
            "explain": model.network is not None,
            "metrics": card.metrics,
            "parity": card.parity,
        },
    })


def model_ready(environ: dict, plane: DataPlane, name: str, version: str | None = None) -> Reply:
    """200 when served; 404 unknown, 503 not loaded. A served version whose files changed and were
    refused says so in `reason`."""
    call = call_of(environ, "v2")
    stale = plane.model_ready(name, version, call)
    answer = {"name": call.model, "version": call.version, "ready": True}
    if stale:
        answer["reason"] = stale
    return json_reply(answer)


def model_statistics(environ: dict, plane: DataPlane, name: str | None = None,
                     version: str | None = None) -> Reply:
    """Triton's statistics extension (service/core/stats.py), summed across every process."""
    return json_reply(plane.statistics(name, version))


def infer(environ: dict, plane: DataPlane, name: str, version: str | None = None) -> Reply:
    """An inference request, from the WSGI environ to the response body and its headers."""
    call = call_of(environ, "v2", inference=True)
    model = plane.model(name, version, call)
    check_content_type(environ, "application/json", "application/octet-stream")
    inference = codec.decode_request(body(environ, plane.settings),
                                     environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"))
    response = plane.infer(model, inference, call)
    payload, header_length = codec.encode_response(
        response, codec.binary_outputs(inference, response.outputs))
    if header_length is None:
        return 200, [("Content-Type", "application/json")], payload
    return 200, [("Content-Type", "application/octet-stream"),
                 (codec.HEADER_LENGTH, str(header_length))], payload
