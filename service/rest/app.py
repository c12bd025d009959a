"""The Flask app: settings, the loaded registry, the protocols, errors, metrics and request ids."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

from flask import Flask, Response, send_from_directory

from service.core import metrics
from service.core.dataplane import DataPlane
from service.repository import polling
from service.rest import access, errors
from service.rest.openapi import document as openapi_document
from service.rest.protocols import tfserving, v2
from service.rest.protocols.common import INFERENCE, METRIC_LABELS, json_response
from service.rest.protocols.hot_path import HotPath
from service.settings import Settings

# The page's files, in service/static (beside the packages, not in service/rest).
STATIC_FOLDER = str(Path(__file__).resolve().parent.parent / "static")

REQUEST_ID = "X-Request-ID"
# A client's id is echoed only when it is short and printable, so it cannot break a log line.
CLIENT_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def build_app(config: Mapping | None = None) -> Flask:
    settings = Settings.load(config)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__, static_folder=STATIC_FOLDER, static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # `//v2//models` is no route: merging slashes would answer 308 to whatever Host was sent.
    app.url_map.merge_slashes = False
    # Built in each worker after the fork (no preload), so each worker polls for itself.
    registry = polling.load(settings)
    polling.start(registry, settings.poll_interval)
    app.extensions["settings"] = settings
    data_plane = app.extensions["data_plane"] = DataPlane(registry, settings)

    errors.register(app)
    app.register_blueprint(v2.blueprint)
    app.register_blueprint(tfserving.blueprint)
    # Access control inside the observer, so that refusals get a request id too; around the
    # hot path and Flask, so that no route is reached without passing it.
    app.wsgi_app = RequestObserver(access.middleware(HotPath(app.wsgi_app, data_plane), settings))

    @app.get("/")
    def page():
        return send_from_directory(app.static_folder, "index.html")

    @app.get("/metrics")
    def prometheus():
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

    @app.get("/openapi.json")
    def openapi():
        return json_response(openapi_document())

    return app


class RequestObserver:
    """WSGI middleware: a request id on every response, and the request metrics.

    Done here rather than in Flask's before/after hooks, which cost about a quarter of a
    single-row prediction's time in the app.
    """

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        given = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = given if CLIENT_ID.fullmatch(given) else os.urandom(16).hex()

        def start(status: str, headers: list, exc_info=None):
            headers.append((REQUEST_ID, request_id))
            labels = environ.get(METRIC_LABELS)
            if labels is not None:  # model routes only: probes and /metrics are not counted
                seconds = time.perf_counter() - started
                metrics.observe_request(*labels, status[:3], seconds)
                if environ.get(INFERENCE) and labels[0]:  # a resolved model's inference request
                    metrics.observe_inference_request(labels[0], labels[1], status[0] == "2", seconds)
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)
