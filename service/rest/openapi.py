"""The OpenAPI 3 description of every route, served at /openapi.json."""

from __future__ import annotations

from functools import cache

from service import __version__
from service.rest.access import PUBLIC

JSON = "application/json"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


ERRORS = {
    "400": _json(_ref("Error"), "malformed request: the message names the field and the problem"),
    "404": _json(_ref("Error"), "unknown model or version"),
    "405": _json(_ref("Error"), "method not allowed: a path ending in :predict or :explain takes POST"),
    "413": _json(_ref("Error"), "body or batch over the configured limit"),
    "415": _json(_ref("Error"), "unsupported Content-Type"),
    "503": _json(_ref("Error"), "model not ready"),
}
UNAUTHORIZED = _json(_ref("Error"), "no API key, or not a valid one (only when the server has keys); "
                     "the WWW-Authenticate header says which")
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
        "description": "model name"}
VERSION = {"name": "version", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
           "description": "model version, a positive integer"}


def _get(summary: str, ok: dict, *codes: str, params=(NAME,)) -> dict:
    return {"get": {"summary": summary, "parameters": list(params),
                    "responses": {"200": ok, **{c: ERRORS[c] for c in codes}}}}


def _post(summary: str, body: str, ok: dict, params=(NAME,)) -> dict:
    return {"post": {
        "summary": summary, "parameters": list(params),
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref(body)}}},
        "responses": {"200": ok, **{code: error for code, error in ERRORS.items() if code != "405"}},
    }}


def _with_versions(paths: dict, base: str, suffix: str, item_factory) -> None:
    paths[f"{base}{suffix}"] = item_factory((NAME,))
    paths[f"{base}/versions/{{version}}{suffix}"] = item_factory((NAME, VERSION))


SCHEMAS = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}}},
    "Tensor": {
        "type": "object", "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": [
                "FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64",
                "UINT8", "UINT16", "UINT32", "UINT64", "BOOL", "BYTES"]},
            "data": {"type": "array", "description": "nested or flat, row-major"},
            "parameters": {"type": "object", "properties": {
                "binary_data_size": {"type": "integer", "minimum": 0}}},
        },
    },
    "TensorMetadata": {"type": "object", "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}}},
    "InferRequest": {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "properties": {
                "binary_data_output": {"type": "boolean"}}},
            "inputs": {"type": "array", "items": _ref("Tensor"), "minItems": 1},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {
                    "type": "object", "properties": {
                        "binary_data": {"type": "boolean"},
                        "classification": {
                            "type": "integer", "minimum": 1,
                            "description": "the classification extension: the top k classes, "
                                           "as BYTES \"value:index:label\"; labelled outputs only"}}}}}},
        },
    },
    "InferResponse": {"type": "object", "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"},
        "id": {"type": "string"}, "outputs": {"type": "array", "items": _ref("Tensor")}}},
    "ModelMetadata": {"type": "object", "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": _ref("TensorMetadata")},
        "outputs": {"type": "array", "items": _ref("TensorMetadata")},
        "parameters": {"type": "object"}}},
    "PredictRequest": {
        "type": "object",
        "description": "exactly one of instances (rows) or inputs (columns)",
        "properties": {
            "signature_name": {"type": "string"},
            "instances": {"type": "array", "minItems": 1, "description": "rows: the model's one "
                          "input per row, or an object keyed by input (or feature) name"},
            "inputs": {"oneOf": [{"type": "array"}, {"type": "object"}]},
        },
    },
    "PredictResponse": {"type": "object", "properties": {
        "predictions": {"type": "array", "description": "one entry per row: the output's values, or "
                        "an object keyed by output name (with labels where the card has them)"},
        "outputs": {"description": "the output's values, or an object keyed by output name"}}},
    "ExplainResponse": {"type": "object", "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"},
        "output": {"type": "string"}, "layers": {"type": "array", "items": {"type": "object"}},
        "explanations": {"type": "array", "items": {"type": "object", "properties": {
            "activations": {"type": "object"}, "prediction": {"type": "array"},
            "label": {"type": "string"}, "label_probability": {"type": "number"},
            "max_abs_difference": {"type": "number"}}}}}},
    "ModelStatus": {"type": "object", "properties": {"model_version_status": {
        "type": "array", "items": {"type": "object", "properties": {
            "version": {"type": "string"}, "state": {"type": "string"},
            "status": {"type": "object", "properties": {
                "error_code": {"type": "string"}, "error_message": {"type": "string"}}}}}}}},
    "Duration": {"type": "object", "required": ["count", "ns"], "properties": {
        "count": {"type": "integer", "minimum": 0}, "ns": {"type": "integer", "minimum": 0}}},
    "Statistics": {"type": "object", "required": ["model_stats"], "properties": {"model_stats": {
        "type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "last_inference": {"type": "integer", "description": "ms since the epoch, 0 for never"},
            "inference_count": {"type": "integer", "description": "rows inferred"},
            "execution_count": {"type": "integer", "description": "runs of the model"},
            "inference_stats": {"type": "object", "properties": {key: _ref("Duration") for key in (
                "success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                "cache_hit")}},
            "batch_stats": {"type": "array", "items": {"type": "object"}}}}}}},
    "Metadata": {"type": "object", "properties": {
        "model_spec": {"type": "object"}, "metadata": {"type": "object"}}},
}


@cache
def document() -> dict:
    paths: dict = {
        "/v2": _get("server metadata", _json({"type": "object"}, "name, version, extensions"),
                    params=()),
        "/v2/health/live": _get("liveness", _json({"type": "object"}, "the server is up"),
                                params=()),
        "/v2/health/ready": _get("readiness: 200 only when every model version found is loaded",
                                 _json({"type": "object"}, "ready"), "503", params=()),
        "/": {"get": {"summary": "the demo page (its files are under /static/)", "responses": {"200": {
            "description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/v2/repository/index": {"post": {
            "summary": "every model version in the repository and its state (READY, or UNAVAILABLE "
                       "with the reason: 'unloaded: ...' for a version the version policy leaves "
                       "out); the body {\"ready\": true} lists the loaded versions only",
            "requestBody": {"required": False, "content": {JSON: {"schema": {
                "type": "object", "properties": {"ready": {"type": "boolean"}}}}}},
            "responses": {"200": _json({"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
                "reason": {"type": "string"}}}}, "the index"), "400": ERRORS["400"]}}},
        "/openapi.json": {"get": {"summary": "this document", "responses": {
            "200": _json({"type": "object"}, "OpenAPI 3 document")}}},
    }
    _with_versions(paths, "/v2/models/{name}", "", lambda p: _get(
        "model metadata", _json(_ref("ModelMetadata"), "metadata"), "404", "503", params=p))
    _with_versions(paths, "/v2/models/{name}", "/ready", lambda p: _get(
        "model readiness", _json({"type": "object"}, "ready"), "404", "503", params=p))
    paths["/v2/models/stats"] = _get(
        "statistics of every loaded version of every model (Triton's statistics extension)",
        _json(_ref("Statistics"), "statistics"), params=())
    _with_versions(paths, "/v2/models/{name}", "/stats", lambda p: _get(
        "statistics of every loaded version of the model, or of one version, summed across "
        "processes", _json(_ref("Statistics"), "statistics"), "404", "503", params=p))
    _with_versions(paths, "/v2/models/{name}", "/infer", lambda p: _post(
        "inference (JSON, or the binary tensor data extension with the header "
        "Inference-Header-Content-Length)", "InferRequest",
        _json(_ref("InferResponse"), "outputs"), params=p))
    _with_versions(paths, "/v1/models/{name}", "", lambda p: _get(
        "TensorFlow Serving model status", _json(_ref("ModelStatus"), "status"), "404", "405", params=p))
    _with_versions(paths, "/v1/models/{name}", "/metadata", lambda p: _get(
        "TensorFlow Serving model metadata", _json(_ref("Metadata"), "signature"), "404", "503",
        params=p))
    _with_versions(paths, "/v1/models/{name}", ":predict", lambda p: _post(
        "TensorFlow Serving predict", "PredictRequest", _json(_ref("PredictResponse"), "predictions"),
        params=p))
    _with_versions(paths, "/v1/models/{name}", ":explain", lambda p: _post(
        "every layer's activations from the NumPy forward propagation", "PredictRequest",
        _json(_ref("ExplainResponse"), "activations"), params=p))
    for path, item in paths.items():  # access control's one table says which routes need the key
        for operation in item.values():
            if path in PUBLIC:
                operation["security"] = []
            else:
                operation["responses"]["401"] = UNAUTHORIZED
    return {
        "openapi": "3.0.3",
        "info": {"title": "onnx-serving", "version": __version__,
                 "description": "Keras networks exported to ONNX, served over the Open Inference "
                                "Protocol v2 and the TensorFlow Serving REST API."},
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "an API key, required only when the server has keys (SERVING_API_KEYS_FILE; "
                           "off by default). Health and /metrics stay open unless SERVING_PUBLIC_HEALTH "
                           "or SERVING_PUBLIC_METRICS is false."}}},
    }
