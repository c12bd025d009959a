"""JSON bodies, shared by the codecs: parsed with orjson into an object, or a 400 saying why not."""

from __future__ import annotations

import numpy as np
import orjson

from service.core.errors import BadRequest


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


def native(values: np.ndarray) -> np.ndarray | np.generic:
    """A tensor as orjson's NumPy support writes it: C-contiguous, of its dtype's own NumPy type,
    a scalar at rank 0. orjson refuses rank-0 arrays, arrays that are not C-contiguous, and
    scalars (one row of a rank-1 tensor) of C long long: onnxruntime's type for INT64 and UINT64
    tensors, a dtype equal to int64 (uint64) but whose scalars are not numpy.int64."""
    values = np.require(values, requirements="C")
    values = values.view(np.dtype(values.dtype.str))  # the same bytes, as e.g. numpy.int64
    return values if values.ndim else values[()]
