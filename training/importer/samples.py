"""The inputs a model and onnxruntime are compared on: generated rows, or the user's --sample.

Generated (seed 0): ROWS rows; float inputs standard normal, except rank-4 float inputs (images,
N x H x W x C), uniform in [0, 1); integer inputs that feed an Embedding uniform in
[0, input_dim), other integers uniform in [0, 10); booleans a fair coin; a dynamic dimension other
than the first is DYNAMIC.

--sample FILE.npz: one array per input, keyed by input name, converted to the input's dtype when
NumPy can do so without changing the kind of number.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from training import one_line
from training.importer.loaded import ImportRefused, Tensor

ROWS = 16  # generated rows
DYNAMIC = 8  # the size of a generated dynamic dimension other than the first
OTHER_INTEGERS = 10  # generated integers that feed no Embedding: uniform in [0, 10)
SEED = 0
GENERATED = (f"{ROWS} generated rows (seed {SEED}): floats standard normal, rank-4 float inputs "
             f"uniform in [0, 1), integers feeding an Embedding uniform in [0, input_dim), other "
             f"integers uniform in [0, {OTHER_INTEGERS}), booleans a fair coin, dynamic dimensions "
             f"other than the first {DYNAMIC}")


def generated_inputs(inputs: list[Tensor], rows: int = ROWS, seed: int = SEED) -> dict[str, np.ndarray]:
    """See the module docstring: what each kind of input is drawn from."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in inputs:
        shape = [rows if axis == 0 and d == -1 else DYNAMIC if d == -1 else d
                 for axis, d in enumerate(tensor.shape)]
        kind = tensor.dtype.kind
        if kind == "b":
            values = rng.random(shape) < 0.5
        elif kind in "iu":
            low, high = tensor.range if tensor.range is not None else (0, OTHER_INTEGERS - 1)
            values = rng.integers(low, high + 1, size=shape)
        elif len(shape) == 4:
            values = rng.random(shape)
        else:
            values = rng.standard_normal(shape)
        feeds[tensor.name] = np.asarray(values).astype(tensor.dtype)
    return feeds


def read_sample(path: Path, inputs: list[Tensor]) -> dict[str, np.ndarray]:
    """The sample's arrays, converted to the inputs' dtypes; refused when they do not fit."""
    where = f"sample {path.name}"
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ImportRefused(f"{where}: not a NumPy .npz archive ({one_line(error)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ImportRefused(f"{where}: a single array, not an .npz archive keyed by input name")
    try:
        with archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ImportRefused(f"{where}: cannot read it ({one_line(error)})") from None
    names = [t.name for t in inputs]
    unknown = [key for key in arrays if key not in names]
    missing = [name for name in names if name not in arrays]
    if unknown:
        raise ImportRefused(f"{where}: {', '.join(map(repr, unknown))} "
                            f"{'is not an input' if len(unknown) == 1 else 'are not inputs'} of the "
                            f"model; its inputs are {names}")
    if missing:
        raise ImportRefused(f"{where}: has no array for input {missing[0]!r}; its inputs are {names}")
    feeds = {tensor.name: converted(where, tensor, arrays[tensor.name]) for tensor in inputs}
    batched = {t.name: feeds[t.name].shape[0] for t in inputs if t.shape[:1] == (-1,)}
    if len(set(batched.values())) > 1:
        raise ImportRefused(f"{where}: the inputs have different numbers of rows {batched}")
    return feeds


def converted(where: str, tensor: Tensor, array: np.ndarray) -> np.ndarray:
    """One sample array in the input's dtype; refused when its kind, shape or values do not fit."""
    at = f"{where}: input {tensor.name!r}"
    if array.dtype.kind not in "biuf":
        raise ImportRefused(f"{at} holds {array.dtype}, not numbers or booleans")
    if not np.can_cast(array.dtype, tensor.dtype, casting="same_kind"):
        raise ImportRefused(f"{at} holds {array.dtype} values, which do not convert to "
                            f"{tensor.datatype}")
    if array.ndim != len(tensor.shape) or any(
            d != -1 and d != n for d, n in zip(tensor.shape, array.shape, strict=True)):
        raise ImportRefused(f"{at} has shape {list(array.shape)}, which does not fit "
                            f"{list(tensor.shape)}")
    if array.ndim and array.shape[0] == 0:
        raise ImportRefused(f"{at} has no rows")
    if tensor.dtype.kind in "iu" and array.size:
        info = np.iinfo(tensor.dtype)
        low, high = tensor.range if tensor.range is not None else (info.min, info.max)
        if array.min() < low or array.max() > high:
            why = "the Embedding's vocabulary" if tensor.range is not None else tensor.datatype
            raise ImportRefused(f"{at} has values outside [{low}, {high}] ({why})")
    result = array.astype(tensor.dtype)
    if tensor.dtype.kind == "f" and np.isfinite(array).all() and not np.isfinite(result).all():
        raise ImportRefused(f"{at} has values too large for {tensor.datatype}")
    return result


def rows_of(feeds: dict[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1
