"""The inference hot path as plain WSGI, in front of Flask.

A single-row prediction spends about 100 us in Flask's request machinery (context, URL map,
Response object), a fifth of a worker's time per request; `POST .../infer` is answered here
with the same function the Flask route calls (service.protocols.v2.infer) and the one error
mapping (service.errors.answer). Everything else, other methods on these paths included, goes
on to Flask.
"""

from __future__ import annotations

import re
from http import HTTPStatus

from service.dataplane import DataPlane
from service.errors import answer
from service.protocols import v2

# Flask's `<name>` matches one path segment; so does this.
V2_INFER = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


class HotPath:
    def __init__(self, flask_wsgi, data_plane: DataPlane):
        self.flask_wsgi = flask_wsgi
        self.data_plane = data_plane

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "POST":
            match = V2_INFER.fullmatch(environ.get("PATH_INFO", ""))
            if match:
                return self.v2_infer(environ, start_response, *match.groups())
        return self.flask_wsgi(environ, start_response)

    def v2_infer(self, environ, start_response, name: str, version: str | None):
        try:
            payload, headers = v2.infer(environ, self.data_plane, _text(name),
                                        version and _text(version))
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
