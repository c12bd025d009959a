"""Tensors from the wire, checked: JSON numbers or raw bytes to NumPy, then to the model's datatype.

Decoding (`from_json`, `from_bytes`, `numbers`) turns what a client sent into an array of the
datatype it declared (or, for TF Serving, of the kind JSON gives: integer, float or boolean).
`conform` then converts that array to the datatype of the model's input:
- floating inputs (FP16, FP32, FP64) take any numbers, rounded to the nearest value; a value
  that is not finite afterwards (NaN, infinity, beyond the type's range) is refused;
- integer inputs take whole numbers within the type's range (and the card's `range`, when
  it has one);
- BOOL inputs take booleans only, and numeric inputs never take booleans.
BYTES is refused: no input the service serves takes strings. BYTES outputs (the classification
extension's) are object arrays of bytes; `datatype_of` and `to_bytes` encode any output.
"""

from __future__ import annotations

import math
import struct
import warnings

import numpy as np

from modelcard.card import TensorSpec
from modelcard.tables import DATATYPE_OF, DATATYPES
from service.core.errors import BadRequest, quote

KNOWN = (*DATATYPES, "BYTES")
MAX_RANK = 8
# A float beyond a narrower float's range casts to inf, which `conform` refuses with a 400;
# NumPy's warning about it would only fill the log (set once: np.errstate per request costs
# more than the cast).
warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning, __name__)
warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning, __name__)


def datatype_of(values: np.ndarray) -> str:
    return "BYTES" if values.dtype == object else DATATYPE_OF[values.dtype]


def to_bytes(values: np.ndarray) -> bytes:
    """An output as the binary tensor data extension sends it: raw little-endian values in
    row-major order, or for BYTES each element as its 4-byte little-endian length and its bytes."""
    if values.dtype == object:
        return b"".join(struct.pack("<I", len(item)) + item for item in values.flat)
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()


def check_datatype(datatype, where: str) -> np.dtype:
    if not isinstance(datatype, str) or datatype not in KNOWN:
        raise BadRequest(f"{where}: unknown datatype {quote(datatype)}; expected one of {', '.join(KNOWN)}")
    if datatype == "BYTES":
        raise BadRequest(f"{where}: datatype BYTES is not supported; no model here takes strings")
    return DATATYPES[datatype]


def check_shape(shape, where: str) -> tuple[tuple[int, ...], int]:
    """The shape and its element count (a Python int: no overflow for absurd shapes)."""
    if (not isinstance(shape, list) or not 0 < len(shape) <= MAX_RANK
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise BadRequest(f"{where}: shape must be an array of 1 to {MAX_RANK} non-negative "
                         f"integers, got {quote(shape)}")
    return tuple(shape), math.prod(shape)


def from_json(data, datatype, shape, where: str, check_booleans: bool = True) -> np.ndarray:
    """A v2 tensor given as JSON values, nested or flat in row-major order, as its datatype."""
    dtype = check_datatype(datatype, where)
    shape, count = check_shape(shape, where)
    values = numbers(data, where, check_booleans, booleans=dtype.kind == "b")
    if values.size != count:
        raise BadRequest(f"{where}: data has {values.size} values but shape {list(shape)} "
                         f"needs {count}")
    return _as_declared(values.reshape(shape), dtype, datatype, where)


def from_bytes(blob: bytes | memoryview, datatype, shape, where: str) -> np.ndarray:
    """A v2 tensor given as raw little-endian bytes (the binary tensor data extension)."""
    dtype = check_datatype(datatype, where).newbyteorder("<")
    shape, count = check_shape(shape, where)
    expected = count * dtype.itemsize
    if len(blob) != expected:
        raise BadRequest(f"{where}: binary data has {len(blob)} bytes but shape {list(shape)} "
                         f"of {datatype} needs {expected}")
    return np.frombuffer(blob, dtype=dtype).reshape(shape)


def _as_declared(values: np.ndarray, dtype: np.dtype, datatype: str, where: str) -> np.ndarray:
    """JSON values held to the datatype the client declared for them."""
    if not values.size or values.dtype == dtype:
        return values.astype(dtype, copy=False)
    if dtype.kind == "b":
        raise BadRequest(f"{where}: datatype BOOL needs true or false values")
    if dtype.kind in "iu":  # integers, or (kind "O") Python integers beyond int64
        if values.dtype.kind == "f":
            raise BadRequest(f"{where}: datatype {datatype} needs whole numbers")
        _check_range(values, np.iinfo(dtype), f"the range of {datatype}", where)
    return values.astype(dtype)


def may_hold_booleans(body: bytes) -> bool:
    """Whether a body has a true or false anywhere: a cheap test that spares most requests the
    element-by-element search for booleans mixed among numbers (NumPy reads them as 1 and 0).
    A false alarm (those bytes inside binary tensor data) only costs that search."""
    return b"true" in body or b"false" in body


def _holds_booleans(data: list) -> bool:
    return any(type(item) is bool or (type(item) is list and _holds_booleans(item)) for item in data)


def numbers(data, where: str, check_booleans: bool = True, booleans: bool = False) -> np.ndarray:
    """A JSON array of numbers (or of booleans only), nested or flat, as an array of its own shape."""
    if not isinstance(data, list):
        raise BadRequest(f"{where}: data must be an array of {'booleans' if booleans else 'numbers'}")
    try:
        values = np.array(data)
    except (ValueError, OverflowError):
        raise BadRequest(f"{where}: data is a ragged or too deeply nested array, or holds an "
                         "integer too large for 64 bits") from None
    if not values.size or values.dtype.kind == "b":
        return values
    if values.dtype.kind == "f" and np.abs(values).max() >= 2**63:
        # NumPy makes floats of integers beyond int64 (UINT64 data, say), losing their last
        # digits: when every value is an integer, keep them exact as Python integers.
        exact = np.array(data, dtype=object)
        if all(type(v) is int for v in exact.flat):
            return exact
    if values.dtype.kind not in "iuf" or check_booleans and _holds_booleans(data):
        kind = "booleans" if values.dtype.kind in "iufb" else _kind_name(values)
        raise BadRequest(f"{where}: data must hold only numbers or only booleans ({kind} found "
                         "among numbers)" if kind == "booleans" else
                         f"{where}: data must hold only numbers ({kind} found)")
    return values


def _kind_name(values: np.ndarray) -> str:
    return {"U": "strings", "S": "strings", "b": "booleans", "O": "null or objects"}.get(
        values.dtype.kind, str(values.dtype))


def _check_range(values: np.ndarray, limits, what: str, where: str) -> None:
    if values.min() < limits.min or values.max() > limits.max:
        raise BadRequest(f"{where}: a value lies outside {what}")


def conform(values: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """The values as the model's input datatype, C-contiguous, or a 400 saying why not."""
    target = spec.dtype
    kind = values.dtype.kind
    if target.kind == "b":
        if kind != "b":
            raise BadRequest(f"{where}: the input takes BOOL; send true or false values")
        return np.ascontiguousarray(values, dtype=target)
    if kind == "b":
        raise BadRequest(f"{where}: the input takes {spec.datatype}; booleans are not numbers here")
    if target.kind == "f":
        converted = np.ascontiguousarray(values, dtype=target)
        if not np.isfinite(converted).all():
            raise BadRequest(f"{where}: data holds NaN, infinity, or a value beyond the "
                             f"{spec.datatype} range")
        return converted
    if values.size:  # an integer input
        if kind == "f" and not (np.isfinite(values).all() and (values == np.trunc(values)).all()):
            raise BadRequest(f"{where}: the input takes {spec.datatype}; send whole numbers")
        _check_range(values, np.iinfo(target), f"the range of {spec.datatype}", where)
        if spec.range is not None:
            low, high = spec.range
            if values.min() < low or values.max() > high:
                raise BadRequest(f"{where}: a value lies outside the input's range [{low}, {high}]")
    return np.ascontiguousarray(values, dtype=target)
