"""The Flask app: settings, the data plane over the loaded repository, the routes (one table,
service/rest/routes.py), access control, errors and request ids."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

from flask import Flask

from service.core.dataplane import DataPlane
from service.core.types import Call
from service.repository import polling
from service.rest import access, errors
from service.rest.health_files import HealthFiles
from service.rest.protocols.common import CALL
from service.rest.queue_budget import QueueBudget
from service.rest.routes import STATIC_FOLDER, HotPath, add_to_flask
from service.settings import Settings

REQUEST_ID = "X-Request-ID"
# A client's id is echoed only when it is short and printable, so it cannot break a log line.
CLIENT_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def build_app(config: Mapping | None = None) -> Flask:
    settings = Settings.load(config)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__, static_folder=str(STATIC_FOLDER), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # `//v2//models` is no route: merging slashes would answer 308 to whatever Host was sent.
    app.url_map.merge_slashes = False
    # Built in each worker after the fork (no preload), so each worker polls for itself.
    data_plane = app.extensions["data_plane"] = DataPlane(polling.registry(settings), settings)
    data_plane.refresh()
    polling.start(data_plane, settings.poll_interval)
    app.extensions["settings"] = settings

    errors.register(app)
    add_to_flask(app)
    # Access control inside the observer, so that refusals get a request id too; around the
    # hot path and Flask, so that no route is reached without passing it.
    served = access.middleware(HotPath(app.wsgi_app, data_plane), settings)
    health = None
    if settings.health_files is not None:  # behind the front door (service/process/launcher.py)
        health = HealthFiles(settings.health_files, data_plane)
        health.start()
    if settings.queue_budget_ms:  # in front of access control: a refusal costs as little as it can
        served = QueueBudget(served, settings.queue_budget_ms, health.shed if health else None)
    app.wsgi_app = RequestObserver(served, data_plane)
    return app


class RequestObserver:
    """WSGI middleware: a request id on every response, and the request's call to the data plane,
    whose hooks hear its status (the request metrics).

    Done here rather than in Flask's before/after hooks, which cost about a quarter of a
    single-row prediction's time in the app.
    """

    def __init__(self, wsgi_app, plane: DataPlane):
        self.wsgi_app = wsgi_app
        self.plane = plane

    def __call__(self, environ, start_response):
        given = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = given if CLIENT_ID.fullmatch(given) else os.urandom(16).hex()
        call = environ[CALL] = Call("")  # the route names its protocol

        def start(status: str, headers: list, exc_info=None):
            headers.append((REQUEST_ID, request_id))
            self.plane.finish(call, status[:3], status[0] == "2")
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)
