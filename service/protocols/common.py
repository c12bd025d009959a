"""What the REST routes share: the data plane of this app, the model asked for, bodies, responses."""

from __future__ import annotations

from flask import Response, current_app, request

from service.codecs.json import dumps
from service.dataplane import DataPlane
from service.errors import UnsupportedMediaType
from service.registry import LoadedModel

METRIC_LABELS = "serving.metric_labels"  # WSGI environ key: [model, version, protocol]


def plane() -> DataPlane:
    return current_app.extensions["data_plane"]


def resolve(name: str, version: str | None, protocol: str) -> LoadedModel:
    """The model asked for; its labels go to the request metrics (see service.app.RequestObserver)."""
    labels = request.environ[METRIC_LABELS] = ["", "", protocol]
    model = plane().model(name, version)
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
            f"Content-Type {mimetype[:40]!r} is not supported; send {' or '.join(allowed)}"
        )


def body() -> bytes:
    return request.get_data(cache=False)


def json_response(document, status: int = 200) -> Response:
    return Response(dumps(document), status=status, mimetype="application/json")
