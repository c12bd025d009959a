"""Open Inference Protocol v2 (KServe / Triton) REST routes: thin, over the v2 codec and the data plane."""

from __future__ import annotations

from flask import Blueprint, Response, request

from service import __version__
from service.core import stats
from service.core.dataplane import DataPlane
from service.core.errors import BadRequest
from service.rest.codecs import v2 as codec
from service.rest.codecs.json import parse_object
from service.rest.protocols.common import (
    body,
    body_in,
    check_content_type_in,
    json_response,
    plane,
    resolve,
    resolve_in,
)

blueprint = Blueprint("v2", __name__)


@blueprint.get("/v2")
def server_metadata():
    return json_response({"name": "onnx-serving", "version": __version__,
                          "extensions": ["binary_tensor_data", "classification", "model_repository",
                                         "statistics"]})


@blueprint.get("/v2/health/live")
def live():
    return json_response({"live": True})


@blueprint.get("/v2/health/ready")
def ready():
    """200 when every model has a version to serve (see ModelRegistry.ready), else 503."""
    models = plane().registry
    ready = models.ready  # read once: a poll may change it meanwhile
    answer = {"ready": ready}
    if models.refused():
        answer["refused_versions"] = models.refused()
    if ready:
        return json_response(answer)
    answer["error"] = models.repository_error or "models with no version to serve: " + "; ".join(
        models.unservable())
    return json_response(answer, status=503)


@blueprint.post("/v2/repository/index")
def repository_index():
    """Every version in the repository and its state (Triton's model repository extension): the
    versions the version policy leaves out are UNAVAILABLE with reason "unloaded: ...", as in
    Triton; `{"ready": true}` lists the loaded ones only."""
    raw = body()
    document = parse_object(raw) if raw.strip() else {}
    ready_only = document.get("ready", False)
    if not isinstance(ready_only, bool):
        raise BadRequest("field 'ready' must be true or false")
    return json_response([
        {"name": name, "version": version, "state": "READY" if ready else "UNAVAILABLE", "reason": reason}
        for name, version, ready, reason in plane().registry.index() if ready or not ready_only
    ])


@blueprint.get("/v2/models/<name>")
@blueprint.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    model = resolve(name, version, "v2")
    card = model.card
    return json_response({
        "name": model.name,
        "versions": [str(v) for v in sorted(plane().registry.models.get(name, {}))],
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


@blueprint.get("/v2/models/<name>/ready")
@blueprint.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    model = resolve(name, version, "v2")  # 404 unknown, 503 not loaded
    answer = {"name": model.name, "version": str(model.version), "ready": True}
    stale = plane().registry.stale(model)
    if stale:  # served, but what lies on disk was refused: say so
        answer["reason"] = f"its files changed and were refused, the copy loaded before serves: {stale}"
    return json_response(answer)


@blueprint.get("/v2/models/stats")
@blueprint.get("/v2/models/<name>/stats")
@blueprint.get("/v2/models/<name>/versions/<version>/stats")
def model_statistics(name: str | None = None, version: str | None = None):
    """Triton's statistics extension (service/core/stats.py), summed across every process."""
    return json_response(stats.statistics(plane().registry, name, version))


@blueprint.post("/v2/models/<name>/infer")
@blueprint.post("/v2/models/<name>/versions/<version>/infer")
def model_infer(name: str, version: str | None = None):
    """POST is answered by the hot path in front of Flask (service/rest/protocols/hot_path.py) with
    the same `infer`; the rule keeps the route in the URL map: 405 for other methods, OpenAPI."""
    payload, headers = infer(request.environ, plane(), name, version)
    return Response(payload, headers=headers)


def infer(environ: dict, data_plane: DataPlane, name: str,
          version: str | None) -> tuple[bytes, list[tuple[str, str]]]:
    """An inference request, from the WSGI environ to the response body and its headers."""
    model = resolve_in(environ, data_plane, name, version, "v2", inference=True)
    check_content_type_in(environ, "application/json", "application/octet-stream")
    inference = codec.decode_request(body_in(environ, data_plane.settings),
                                     environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"))
    response = data_plane.infer(model, inference)
    payload, header_length = codec.encode_response(
        response, codec.binary_outputs(inference, response.outputs))
    if header_length is None:
        return payload, [("Content-Type", "application/json")]
    return payload, [("Content-Type", "application/octet-stream"),
                     (codec.HEADER_LENGTH, str(header_length))]
