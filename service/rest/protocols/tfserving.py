"""TensorFlow Serving REST routes, and :explain: thin, over the TF Serving codec and the data plane."""

from __future__ import annotations

from flask import Blueprint, Response, request
from werkzeug.exceptions import MethodNotAllowed

from service.core.dataplane import DataPlane
from service.core.errors import BadRequest, ModelNotFound
from service.core.tensors import may_hold_booleans
from service.rest.codecs import tfserving as codec
from service.rest.codecs.json import dumps, parse_object
from service.rest.protocols.common import (
    body_in,
    check_content_type_in,
    json_response,
    plane,
    resolve,
    resolve_in,
)

blueprint = Blueprint("tfserving", __name__)
VERBS = ("predict", "explain")


@blueprint.get("/v1/models/<name>")
@blueprint.get("/v1/models/<name>/versions/<version>")
def model_status(name: str, version: str | None = None):
    if ":" in name or (version and ":" in version):  # a :predict or :explain path, asked with GET
        raise MethodNotAllowed(valid_methods=["POST"])
    registry = plane().registry
    versions = registry.status(name)
    if version is not None:
        number = registry.version_number(name, version)
        if number not in versions:
            raise ModelNotFound(name, number)
        versions = {number: versions[number]}
    return json_response({"model_version_status": [
        {
            "version": str(number),
            "state": "AVAILABLE" if reason is None else "END",
            "status": {"error_code": "OK" if reason is None else "UNKNOWN",
                       "error_message": reason or ""},
        }
        for number, reason in sorted(versions.items(), reverse=True)
    ]})


@blueprint.get("/v1/models/<name>/metadata")
@blueprint.get("/v1/models/<name>/versions/<version>/metadata")
def model_metadata(name: str, version: str | None = None):
    return json_response(codec.encode_metadata(resolve(name, version, "tfserving").card))


@blueprint.post("/v1/models/<name_verb>")
@blueprint.post("/v1/models/<name>/versions/<name_verb>")
def model_call(name_verb: str, name: str | None = None):
    """POST is answered by the hot path in front of Flask (service/rest/protocols/hot_path.py) with
    the same `call`; the rules keep the routes in the URL map: 405 for other methods, OpenAPI."""
    payload, headers = call(request.environ, plane(), name_verb, name)
    return Response(payload, headers=headers)


def call(environ: dict, data_plane: DataPlane, name_verb: str,
         name: str | None = None) -> tuple[bytes, list[tuple[str, str]]]:
    """`name:verb`, or `name/versions/version:verb` (the second rule binds the version as name_verb)."""
    target, _, verb = name_verb.rpartition(":")
    if verb not in VERBS or not target:
        raise BadRequest(f"the path must end in :{' or :'.join(VERBS)}")
    model_name, version = (target, None) if name is None else (name, target)
    model = resolve_in(environ, data_plane, model_name, version,
                       "tfserving" if verb == "predict" else "explain", inference=True)
    check_content_type_in(environ, "application/json")
    raw = body_in(environ, data_plane.settings)
    inference, row_format = codec.decode_request(parse_object(raw), model.card, may_hold_booleans(raw))
    if verb == "explain":
        document = codec.encode_explain(*data_plane.explain(model, inference))
    else:
        document = codec.encode_predict(data_plane.infer(model, inference), row_format)
    return dumps(document), [("Content-Type", "application/json")]
