"""What both protocols need: the registry and settings of this app, body parsing, timed inference."""

from __future__ import annotations

import time

import numpy as np
import orjson
from flask import Response, current_app, request

from service import metrics
from service.errors import BadRequest, UnsupportedMediaType
from service.registry import ModelRegistry, OnnxModel
from service.settings import Settings

METRIC_LABELS = "serving.metric_labels"  # WSGI environ key: [model, version, protocol]


def registry() -> ModelRegistry:
    return current_app.extensions["model_registry"]


def settings() -> Settings:
    return current_app.extensions["settings"]


def resolve(name: str, version: str | None, protocol: str) -> OnnxModel:
    """The model asked for; its labels go to the request metrics (see service.app.RequestObserver)."""
    labels = request.environ[METRIC_LABELS] = ["", "", protocol]
    model = registry().get(name, version)
    labels[:2] = model.name, str(model.version)
    return model


# Read as JSON too: tritonclient sends no Content-Type, and curl -d (as in TensorFlow
# Serving's own examples) sends the form type.
LENIENT = ("", "application/x-www-form-urlencoded")


def check_content_type(*allowed: str) -> None:
    # Read from the environ: werkzeug's parsed request.mimetype costs more than a prediction.
    mimetype = request.environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    if mimetype not in allowed and mimetype not in LENIENT and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {mimetype!r} is not supported; send {' or '.join(allowed)}"
        )


def parse_json(body: bytes | memoryview, what: str = "request body"):
    if not body:
        raise BadRequest(f"{what} is empty; expected a JSON object")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"{what} is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return document


def infer(model: OnnxModel, x: np.ndarray) -> dict[str, np.ndarray]:
    started = time.perf_counter()
    outputs = model.infer(x)
    metrics.observe_inference(model.name, str(model.version), x.shape[0], time.perf_counter() - started)
    return outputs


def json_response(document, status: int = 200) -> Response:
    return Response(orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY),
                    status=status, mimetype="application/json")
