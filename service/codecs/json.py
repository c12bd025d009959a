"""JSON bodies, shared by the codecs: parsed with orjson into an object, or a 400 saying why not."""

from __future__ import annotations

import orjson

from service.errors import BadRequest


def parse_object(body: bytes | memoryview, what: str = "request body") -> dict:
    if not body:
        raise BadRequest(f"{what} is empty; expected a JSON object")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"{what} is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return document


def dumps(document) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
