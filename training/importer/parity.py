"""The model (Keras, or a SavedModel's signature run by TensorFlow) against onnxruntime.

Every output is held to |reference - onnxruntime| <= tolerance x max(1, largest |reference|):
absolute for probabilities and other outputs within [-1, 1], relative to the output's scale for
larger ones (float32 keeps about 7 digits, so an absolute bound means nothing for outputs in the
thousands). The default tolerance, 1e-4, is ten times the built-in models' 1e-5: imported
networks are deeper (convolutions, recurrences) and float32 sums taken in a different order
drift further, yet measured differences stay near 1e-7..1e-6, while a wrong conversion (a
missing layer, a transposed kernel, a wrong activation) differs by 1e-2 or more. Above the
tolerance nothing is published.
"""

from __future__ import annotations

import math

import numpy as np

from training import one_line, quiet
from training.importer.loaded import ImportRefused, Loaded
from training.importer.samples import rows_of

TOLERANCE = 1e-4
CHUNK = 256  # rows per Keras call when comparing on a sample


def reference_outputs(loaded: Loaded, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's own answers (Keras or TensorFlow), CHUNK rows at a time."""
    import tensorflow as tf

    names = [t.name for t in loaded.inputs]
    batched = all(t.shape[:1] == (-1,) for t in loaded.inputs)
    rows = rows_of(feeds) if batched else 1
    step = CHUNK if batched else max(rows, 1)
    parts: dict[str, list[np.ndarray]] = {t.name: [] for t in loaded.outputs}
    try:
        for start in range(0, rows, step):
            chunk = [tf.constant(feeds[n][start:start + step] if batched else feeds[n]) for n in names]
            with quiet.python_logs():
                answer = loaded.call(*chunk)
            for name in parts:
                value = answer[name]
                parts[name].append(value.numpy() if hasattr(value, "numpy") else np.asarray(value))
    except Exception as error:
        raise ImportRefused(f"{loaded.path.name}: the model fails on the comparison inputs "
                            f"({one_line(error)}); give a --sample") from None
    return {name: np.concatenate(chunks) if batched else chunks[0] for name, chunks in parts.items()}


def onnx_session(loaded: Loaded, model_bytes: bytes):
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ImportRefused(f"{loaded.path.name}: onnxruntime cannot load the exported graph "
                            f"({one_line(error)})") from None


def onnx_outputs(loaded: Loaded, session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [t.name for t in loaded.outputs]
    try:
        return dict(zip(names, session.run(names, feeds), strict=True))
    except Exception as error:
        raise ImportRefused(f"{loaded.path.name}: onnxruntime fails on the comparison inputs "
                            f"({one_line(error)})") from None


def compare(loaded: Loaded, reference: dict, answers: dict, tolerance: float, what: str) -> dict[str, float]:
    """max |reference - answer| per output; refused above tolerance x max(1, max |reference|)."""
    differences = {}
    name = loaded.path.name
    for tensor in loaded.outputs:
        expected, got = reference[tensor.name], answers[tensor.name]
        if expected.shape != got.shape:
            raise ImportRefused(f"{name}: output {tensor.name!r} has shape {list(got.shape)} in "
                                f"{what}, {list(expected.shape)} in the model")
        expected, got = expected.astype(np.float64), got.astype(np.float64)
        if not np.isfinite(expected).all():
            raise ImportRefused(f"{name}: output {tensor.name!r} is not finite on the comparison "
                                "inputs; give a --sample")
        difference = float(np.max(np.abs(expected - got))) if expected.size else 0.0
        if not math.isfinite(difference):
            difference = math.inf
        scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
        if difference > tolerance * scale:
            raise ImportRefused(f"{name}: output {tensor.name!r}: {what} differs from the model by "
                                f"{difference:.2e}, above the tolerance {tolerance:g}"
                                + (f" x {scale:.3g}" if scale > 1 else ""))
        differences[tensor.name] = difference
    return differences
