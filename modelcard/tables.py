"""The tables training and the service both need, written once."""

from __future__ import annotations

import re

import numpy as np

# Model names become folder names and URLs: letters, digits, '_', '.', '-', at most 128.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# The Open Inference Protocol's numeric and boolean datatypes, their NumPy types, and the type
# strings onnxruntime gives for them.
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(kind) for name, kind in (
        ("BOOL", np.bool_),
        ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32), ("UINT64", np.uint64),
        ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32), ("INT64", np.int64),
        ("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64),
    )
}
DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}
ONNX_TYPES = {
    "BOOL": "tensor(bool)", "UINT8": "tensor(uint8)", "UINT16": "tensor(uint16)",
    "UINT32": "tensor(uint32)", "UINT64": "tensor(uint64)", "INT8": "tensor(int8)",
    "INT16": "tensor(int16)", "INT32": "tensor(int32)", "INT64": "tensor(int64)",
    "FP16": "tensor(float16)", "FP32": "tensor(float)", "FP64": "tensor(double)",
}
DATATYPE_OF_ONNX = {onnx_type: name for name, onnx_type in ONNX_TYPES.items()}
