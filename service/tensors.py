"""Request tensors to float32 NumPy arrays, checked; shared by both protocols.

Conversion rule: every model takes FP32. FP32, FP16 and FP64 data are rounded to the
nearest float32; INT8..INT64 and UINT8..UINT64 data must be whole numbers within their
type's range and are converted to float32 (exact below 2**24). A value that is not finite
after conversion (NaN, infinity, or beyond float32's range) is refused. BOOL and BYTES are
refused: no model here takes them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from service.errors import BadRequest, PayloadTooLarge

NUMERIC = {
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
}
KNOWN = (*NUMERIC, "BOOL", "BYTES")


def check_datatype(datatype, where: str) -> np.dtype:
    if not isinstance(datatype, str) or datatype not in KNOWN:
        raise BadRequest(f"{where}: unknown datatype {datatype!r}; expected one of {', '.join(KNOWN)}")
    if datatype not in NUMERIC:
        raise BadRequest(f"{where}: datatype {datatype} is not supported; the model takes FP32 "
                         "(FP64, FP16 and integer types are converted)")
    return np.dtype(NUMERIC[datatype])


MAX_RANK = 8
# A float64 beyond float32's range casts to inf, which finite_float32 refuses with a 400;
# NumPy's warning about it would only fill the log (set here once: np.errstate per request
# costs more than the cast).
warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning, __name__)


def check_shape(shape, where: str) -> tuple[tuple[int, ...], int]:
    """The shape and its element count (a Python int: no overflow for absurd shapes)."""
    if (not isinstance(shape, list) or not 0 < len(shape) <= MAX_RANK
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise BadRequest(f"{where}: shape must be an array of 1 to {MAX_RANK} non-negative "
                         f"integers, got {shape!r}")
    return tuple(shape), math.prod(shape)


def from_json(data, datatype, shape, where: str, check_booleans: bool = True) -> np.ndarray:
    """A tensor given as JSON numbers, nested or flat in row-major order."""
    dtype = check_datatype(datatype, where)
    shape, count = check_shape(shape, where)
    values = numbers(data, where, check_booleans)
    if values.size != count:
        raise BadRequest(f"{where}: data has {values.size} values but shape {list(shape)} "
                         f"needs {count}")
    if dtype.kind in "iu":
        if values.size and values.dtype.kind == "f":
            raise BadRequest(f"{where}: datatype {datatype} needs whole numbers")
        limits = np.iinfo(dtype)
        if values.size and (values.min() < limits.min or values.max() > limits.max):
            raise BadRequest(f"{where}: a value lies outside the range of {datatype}")
    return finite_float32(values.reshape(shape), where)


def may_hold_booleans(body: bytes) -> bool:
    """Whether a body has a true or false anywhere: a cheap test that spares most requests the
    element-by-element search for booleans mixed among numbers (NumPy reads them as 1 and 0).
    A false alarm (those bytes inside binary tensor data) only costs that search."""
    return b"true" in body or b"false" in body


def _holds_booleans(data: list) -> bool:
    return any(type(item) is bool or (type(item) is list and _holds_booleans(item)) for item in data)


def numbers(data, where: str, check_booleans: bool = True) -> np.ndarray:
    """A JSON array of numbers, nested or flat, as an integer or float array of its own shape."""
    if not isinstance(data, list):
        raise BadRequest(f"{where}: data must be an array of numbers")
    try:
        values = np.array(data)
    except ValueError:
        raise BadRequest(f"{where}: data is a ragged or too deeply nested array") from None
    if values.size and (values.dtype.kind not in "iuf" or check_booleans and _holds_booleans(data)):
        kind = "booleans" if values.dtype.kind in "iufb" else _kind_name(values)
        raise BadRequest(f"{where}: data must hold only numbers ({kind} found)")
    return values


def from_bytes(blob: bytes | memoryview, datatype, shape, where: str) -> np.ndarray:
    """A tensor given as raw little-endian bytes (the binary tensor data extension)."""
    dtype = check_datatype(datatype, where).newbyteorder("<")
    shape, count = check_shape(shape, where)
    expected = count * dtype.itemsize
    if len(blob) != expected:
        raise BadRequest(f"{where}: binary data has {len(blob)} bytes but shape {list(shape)} "
                         f"of {datatype} needs {expected}")
    return finite_float32(np.frombuffer(blob, dtype=dtype).reshape(shape), where)


def finite_float32(values: np.ndarray, where: str) -> np.ndarray:
    converted = values.astype(np.float32, copy=False)  # beyond float32's range: inf, refused below
    if not np.isfinite(converted).all():
        raise BadRequest(f"{where}: data holds NaN, infinity, or a value beyond the FP32 range")
    return converted


def _kind_name(values: np.ndarray) -> str:
    return {"U": "strings", "S": "strings", "b": "booleans", "O": "null or objects"}.get(
        values.dtype.kind, str(values.dtype))


def fit_to_model(x: np.ndarray, model, max_batch: int, where: str) -> np.ndarray:
    """A 2-D (rows, features) batch of at least one row and at most max_batch rows."""
    expected = [-1, model.features]
    if x.ndim != 2 or x.shape[1] != model.features:
        raise BadRequest(f"{where}: shape {list(x.shape)} does not match the model's {expected}")
    if x.shape[0] == 0:
        raise BadRequest(f"{where}: the batch is empty")
    if x.shape[0] > max_batch:
        raise PayloadTooLarge(f"{where}: batch of {x.shape[0]} rows is over the limit of {max_batch}")
    return np.ascontiguousarray(x)
