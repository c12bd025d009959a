"""The Flask app: settings, the loaded registry, the protocols, errors, metrics and request ids."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping

from flask import Flask, Response, g, request

from service import errors, metrics
from service.openapi import document as openapi_document
from service.protocols import tfserving, v2
from service.protocols.common import json_response
from service.registry import ModelRegistry
from service.settings import Settings

REQUEST_ID = "X-Request-ID"
# A client's id is echoed only when it is short and printable, so it cannot break a log line.
CLIENT_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def build_app(config: Mapping | None = None) -> Flask:
    settings = Settings.load(config)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    registry = ModelRegistry(
        settings.model_repository, (settings.intra_op_threads, settings.inter_op_threads)
    ).load()
    metrics.record_registry(registry)
    app.extensions["settings"] = settings
    app.extensions["model_registry"] = registry

    errors.register(app)
    app.register_blueprint(v2.blueprint)
    app.register_blueprint(tfserving.blueprint)
    app.before_request(start_request)
    app.after_request(finish_request)

    @app.get("/metrics")
    def prometheus():
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

    @app.get("/openapi.json")
    def openapi():
        return json_response(openapi_document())

    return app


def start_request() -> None:
    g.started = time.perf_counter()
    given = request.headers.get(REQUEST_ID, "")
    g.request_id = given if CLIENT_ID.match(given) else uuid.uuid4().hex


def finish_request(response: Response) -> Response:
    response.headers[REQUEST_ID] = g.request_id
    protocol = g.get("protocol")
    if protocol is not None:  # prediction and model routes only; probes and /metrics are not counted
        metrics.REQUESTS.labels(
            g.get("model_name", ""), g.get("model_version", ""), protocol, str(response.status_code)
        ).inc()
        metrics.REQUEST_SECONDS.labels(protocol).observe(time.perf_counter() - g.started)
    return response
