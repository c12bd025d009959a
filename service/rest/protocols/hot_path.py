"""The inference hot path as plain WSGI, in front of Flask.

A single-row prediction spends about 100 us in Flask's request machinery (context, URL map,
Response object), a fifth of a worker's time per request. The inference routes, v2's
`POST .../infer` and TF Serving's `POST /v1/models/...:predict` (and `:explain`), are answered
here with the same functions their Flask routes call (service.rest.protocols.v2.infer,
service.rest.protocols.tfserving.call) and the one error mapping (service.core.errors.answer).
Everything else, other methods on these paths included, goes on to Flask.
"""

from __future__ import annotations

import re
from http import HTTPStatus

from service.core.dataplane import DataPlane
from service.core.errors import answer
from service.rest.protocols import tfserving, v2

# The POST routes answered here and what answers them; like Flask's `<name>`, each group is one
# path segment.
ROUTES = (
    (re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer"), v2.infer),
    (re.compile(r"/v1/models/(?:(?P<name>[^/]+)/versions/)?(?P<name_verb>[^/]+)"), tfserving.call),
)
STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


class HotPath:
    def __init__(self, flask_wsgi, data_plane: DataPlane):
        self.flask_wsgi = flask_wsgi
        self.data_plane = data_plane

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            path = environ.get("PATH_INFO", "")
            for pattern, route in ROUTES:
                match = pattern.fullmatch(path)
                if match:
                    return self.respond(environ, start_response, route, match.groupdict())
        return self.flask_wsgi(environ, start_response)

    def respond(self, environ, start_response, route, segments: dict[str, str | None]):
        try:
            payload, headers = route(environ, self.data_plane, **{
                name: value and _text(value) for name, value in segments.items()})
            status = 200
        except Exception as error:  # the one error mapping decides what to say
            status, payload = answer(error)
            headers = [("Content-Type", "application/json")]
        headers.append(("Content-Length", str(len(payload))))
        start_response(STATUS_LINES[status], headers)
        return [payload]


def _text(segment: str) -> str:
    """A path segment as Flask would give it: WSGI passes the URL's bytes as latin-1."""
    return segment.encode("latin-1").decode("utf-8", "replace")
