"""What the REST routes share: the call to the data plane, bodies, JSON replies.

Every route is a plain function of the WSGI environ and the data plane (service/rest/routes.py
builds Flask's rules and the hot path from one table of them), so none of this needs Flask."""

from __future__ import annotations

from pathlib import Path

from gunicorn.http.errors import ParseException

from service.core.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.core.types import Call
from service.rest.codecs.json import dumps
from service.settings import Settings

CALL = "serving.call"  # WSGI environ key: this request's Call (made by service.rest.app.RequestObserver)
BODY_FILE = "HTTP_X_FRONT_DOOR_BODY_FILE"  # set by nginx for large bodies (service/process/nginx.py)
JSON = [("Content-Type", "application/json")]

# What a route answers: status, headers, body.
Reply = tuple[int, list[tuple[str, str]], bytes]


def call_of(environ: dict, protocol: str, inference: bool = False) -> Call:
    """This request's call to the data plane, for `protocol`: the data plane names the model in it
    (the request metrics, the statistics)."""
    call = environ[CALL]
    call.protocol, call.inference = protocol, inference
    return call


# Read as JSON too: tritonclient sends no Content-Type, and curl -d (as in TensorFlow
# Serving's own examples) sends the form type, unless access control is on: then
# service.rest.access refuses the form type (a page elsewhere could send it) before any route.
LENIENT = ("", "application/x-www-form-urlencoded")


def check_content_type(environ: dict, *allowed: str) -> None:
    # Read from the environ: werkzeug's parsed request.mimetype costs more than a prediction.
    mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    if mimetype not in allowed and mimetype not in LENIENT and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {mimetype[:40]!r} is not supported; send {' or '.join(allowed)}"
        )


def body(environ: dict, settings: Settings) -> bytes:
    """The request body, read in one call: werkzeug's stream reads it in 64 KiB pieces, and
    gunicorn copies what it holds on every piece (3.8 ms for a 1.2 MB body, against 1.1 ms).
    A chunked body has no Content-Length: it is read up to the limit and refused past it
    (werkzeug would cut it silently), and malformed chunks are the client's mistake, a 400."""
    handed_over = body_file(environ, settings.body_files)
    if handed_over is not None:
        return handed_over.read_bytes()
    limit = settings.max_body_bytes
    declared = environ.get("CONTENT_LENGTH")
    try:
        if declared:
            length = int(declared)  # gunicorn has checked that it is a number
            if length > limit:
                raise PayloadTooLarge("request body is larger than the configured limit")
            data = environ["wsgi.input"].read(length)
            if len(data) != length:
                raise BadRequest(f"the request body ended after {len(data)} of {length} bytes")
            return data
        data = environ["wsgi.input"].read(limit + 1)
    except ParseException as error:
        raise BadRequest(f"the chunked request body is malformed ({type(error).__name__})") from None
    if len(data) > limit:
        raise PayloadTooLarge("request body is larger than the configured limit")
    return data


def body_file(environ: dict, folder: Path | None) -> Path | None:
    """The file in which the front door left a large body (service/process/nginx.py): a body read from
    the page cache costs a worker a tenth of one read through the socket. Believed only from
    nginx, on gunicorn's unix socket (no REMOTE_ADDR), and only inside nginx's body folder."""
    name = environ.get(BODY_FILE)
    if not name or folder is None or environ.get("REMOTE_ADDR"):
        return None
    path = Path(name)
    if path.parent != folder:
        raise BadRequest("the front door named a body file outside its folder")
    return path


def json_reply(document, status: int = 200) -> Reply:
    return status, list(JSON), dumps(document)
