"""Every REST route, once: the table from which both Flask's URL map and the plain-WSGI hot path
in front of it are built (service/rest/app.py), and against which the OpenAPI document is
checked (tests/test_app.py).

A route's function takes the WSGI environ, the data plane and the rule's path segments, and
returns a Reply (status, headers, body); errors are raised and mapped once
(service.core.errors.answer). A rule's `<name>` is one path segment, for Flask as for the hot path.

The hot routes, the inference POSTs, are answered before Flask: a single-row prediction spends
about 100 us in Flask's request machinery (context, URL map, Response object), a fifth of a
worker's time per request. Their Flask rules stay in the URL map, so that other methods get 405.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from flask import Flask, Response, current_app, request

from service.core import metrics
from service.core.dataplane import DataPlane
from service.core.errors import answer
from service.rest.openapi import document as openapi_document
from service.rest.protocols import tfserving, v2
from service.rest.protocols.common import Reply, json_reply

# The page's files, in service/static (beside the packages, not in service/rest).
STATIC_FOLDER = Path(__file__).resolve().parent.parent / "static"


def page(environ: dict, plane: DataPlane) -> Reply:
    return 200, [("Content-Type", "text/html; charset=utf-8")], (STATIC_FOLDER / "index.html").read_bytes()


def prometheus(environ: dict, plane: DataPlane) -> Reply:
    body, content_type = metrics.exposition()
    return 200, [("Content-Type", content_type)], body


def openapi(environ: dict, plane: DataPlane) -> Reply:
    return json_reply(openapi_document())


@dataclass(frozen=True)
class Route:
    method: str
    rules: tuple[str, ...]
    function: Callable[..., Reply]
    hot: bool = False  # answered in front of Flask: POST only, other methods go on to Flask's 405

    def __post_init__(self):
        if self.hot and self.method != "POST":
            raise ValueError(f"{self.endpoint}: only POST routes are answered before Flask")

    @property
    def endpoint(self) -> str:
        return f"{self.function.__module__}.{self.function.__name__}"


def _versioned(base: str, suffix: str = "") -> tuple[str, str]:
    return f"{base}{suffix}", f"{base}/versions/<version>{suffix}"


ROUTES = (
    Route("GET", ("/",), page),
    Route("GET", ("/metrics",), prometheus),
    Route("GET", ("/openapi.json",), openapi),
    # Open Inference Protocol v2
    Route("GET", ("/v2",), v2.server_metadata),
    Route("GET", ("/v2/health/live",), v2.live),
    Route("GET", ("/v2/health/ready",), v2.ready),
    Route("POST", ("/v2/repository/index",), v2.repository_index),
    Route("GET", _versioned("/v2/models/<name>"), v2.model_metadata),
    Route("GET", _versioned("/v2/models/<name>", "/ready"), v2.model_ready),
    Route("GET", ("/v2/models/stats", *_versioned("/v2/models/<name>", "/stats")), v2.model_statistics),
    Route("POST", _versioned("/v2/models/<name>", "/infer"), v2.infer, hot=True),
    # TensorFlow Serving: `name:predict`, or `name/versions/version:predict` (and :explain)
    Route("GET", _versioned("/v1/models/<name>"), tfserving.model_status),
    Route("GET", _versioned("/v1/models/<name>", "/metadata"), tfserving.model_metadata),
    Route("POST", ("/v1/models/<name_verb>", "/v1/models/<name>/versions/<name_verb>"),
          tfserving.model_call, hot=True),
)


def add_to_flask(app: Flask, routes=ROUTES) -> None:
    """Every route as a Flask view over the same function."""
    for route in routes:
        view = _view(route.function)
        for rule in route.rules:
            app.add_url_rule(rule, endpoint=route.endpoint, view_func=view, methods=[route.method])


def _view(function):
    def view(**segments):
        status, headers, body = function(request.environ, current_app.extensions["data_plane"],
                                         **segments)
        return Response(body, status=status, headers=headers)

    view.__name__ = function.__name__
    return view


STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


class HotPath:
    """WSGI: the hot routes answered here, everything else, other methods on their paths
    included, passed on to Flask."""

    def __init__(self, flask_wsgi, plane: DataPlane, routes=ROUTES):
        self.flask_wsgi = flask_wsgi
        self.plane = plane
        self.patterns = [(re.compile(_pattern(rule)), route.function)
                         for route in routes if route.hot for rule in route.rules]

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            path = environ.get("PATH_INFO", "")
            for pattern, function in self.patterns:
                match = pattern.fullmatch(path)
                if match:
                    return self.respond(environ, start_response, function, match.groupdict())
        return self.flask_wsgi(environ, start_response)

    def respond(self, environ, start_response, function, segments: dict[str, str]):
        try:
            status, headers, payload = function(environ, self.plane, **{
                name: _text(value) for name, value in segments.items()})
        except Exception as error:  # the one error mapping decides what to say
            status, payload = answer(error)
            headers = [("Content-Type", "application/json"), *getattr(error, "headers", ())]
        headers.append(("Content-Length", str(len(payload))))
        start_response(STATUS_LINES[status], headers)
        return [payload]


def _pattern(rule: str) -> str:
    """A rule as a regular expression: each `<name>` one path segment, as Flask's default converter."""
    return re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", re.escape(rule))  # re.escape leaves < and > be


def _text(segment: str) -> str:
    """A path segment as Flask would give it: WSGI passes the URL's bytes as latin-1."""
    return segment.encode("latin-1").decode("utf-8", "replace")
