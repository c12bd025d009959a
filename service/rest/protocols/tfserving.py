"""TensorFlow Serving REST routes, and :explain: thin, over the TF Serving codec and the data
plane. Each is a function of the WSGI environ, the data plane and the path's segments; their
rules are in service/rest/routes.py."""

from __future__ import annotations

from werkzeug.exceptions import MethodNotAllowed

from service.core.dataplane import DataPlane
from service.core.errors import BadRequest
from service.core.tensors import may_hold_booleans
from service.rest.codecs import tfserving as codec
from service.rest.codecs.json import dumps, parse_object
from service.rest.protocols.common import JSON, Reply, body, call_of, check_content_type, json_reply

VERBS = ("predict", "explain")


def model_status(environ: dict, plane: DataPlane, name: str, version: str | None = None) -> Reply:
    if ":" in name or (version and ":" in version):  # a :predict or :explain path, asked with GET
        raise MethodNotAllowed(valid_methods=["POST"])
    return json_reply({"model_version_status": [
        {
            "version": str(number),
            "state": "AVAILABLE" if reason is None else "END",
            "status": {"error_code": "OK" if reason is None else "UNKNOWN",
                       "error_message": reason or ""},
        }
        for number, reason in sorted(plane.version_status(name, version).items(), reverse=True)
    ]})


def model_metadata(environ: dict, plane: DataPlane, name: str, version: str | None = None) -> Reply:
    model, _ = plane.model_metadata(name, version, call_of(environ, "tfserving"))
    return json_reply(codec.encode_metadata(model.card))


def model_call(environ: dict, plane: DataPlane, name_verb: str, name: str | None = None) -> Reply:
    """`name:verb`, or `name/versions/version:verb` (the second rule binds the version as name_verb)."""
    target, _, verb = name_verb.rpartition(":")
    if verb not in VERBS or not target:
        raise BadRequest(f"the path must end in :{' or :'.join(VERBS)}")
    model_name, version = (target, None) if name is None else (name, target)
    call = call_of(environ, "tfserving" if verb == "predict" else "explain", inference=True)
    model = plane.model(model_name, version, call)
    check_content_type(environ, "application/json")
    raw = body(environ, plane.settings)
    inference, row_format = codec.decode_request(parse_object(raw), model.card, may_hold_booleans(raw))
    if verb == "explain":
        document = codec.encode_explain(*plane.explain(model, inference, call))
    else:
        document = codec.encode_predict(plane.infer(model, inference, call), row_format)
    return 200, list(JSON), dumps(document)
