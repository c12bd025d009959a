"""An "echo" model for every datatype the service serves, built with onnx.helper (no TensorFlow):
input `x_<datatype>` of shape [-1, 3] comes back unchanged as output `y_<datatype>`, and a range-
limited INT64 input `token` [-1, 2] comes back as `token_out`. Whatever the service answers must
equal what was sent, bit for bit: the oracle is the request itself."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ONNX_TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
}
DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
TOKEN_RANGE = (0, 99)
NAME = "echo"


def write_echo_model(repository: Path, version: int = 1, model_name: str = NAME,
                     datatypes: tuple[str, ...] = tuple(ONNX_TYPES)) -> Path:
    folder = repository / model_name / str(version)
    folder.mkdir(parents=True)
    inputs, outputs, nodes, card_in, card_out = [], [], [], [], []
    for datatype in datatypes:
        onnx_type = ONNX_TYPES[datatype]
        name = f"x_{datatype.lower()}"
        inputs.append(helper.make_tensor_value_info(name, onnx_type, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"y_{datatype.lower()}", onnx_type, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [name], [f"y_{datatype.lower()}"]))
        card_in.append({"name": name, "datatype": datatype, "shape": [-1, 3]})
        card_out.append({"name": f"y_{datatype.lower()}", "datatype": datatype, "shape": [-1, 3]})
    inputs.append(helper.make_tensor_value_info("token", TensorProto.INT64, ["batch", 2]))
    outputs.append(helper.make_tensor_value_info("token_out", TensorProto.INT64, ["batch", 2]))
    nodes.append(helper.make_node("Identity", ["token"], ["token_out"]))
    card_in.append({"name": "token", "datatype": "INT64", "shape": [-1, 2], "range": list(TOKEN_RANGE)})
    card_out.append({"name": "token_out", "datatype": "INT64", "shape": [-1, 2]})
    graph = helper.make_graph(nodes, "echo", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, folder / "model.onnx")
    card = {
        "name": model_name, "version": version,
        "description": "Echoes every input back, one per datatype.",
        "platform": "onnx_onnxv1",
        "source": {"kind": "onnx", "file": "echo.onnx"},
        "inputs": card_in, "outputs": card_out,
        "parity": {"reference": None},
        "files": {"model.onnx": {"sha256": hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()}},
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    return folder


def sample(rows: int = 2, seed: int = 0, datatypes: tuple[str, ...] = tuple(DTYPES)) -> dict[str, np.ndarray]:
    """Values of every input, spread over each datatype's range (extremes included)."""
    rng = np.random.default_rng(seed)
    values = {}
    for datatype in datatypes:
        dtype = DTYPES[datatype]
        if datatype == "BOOL":
            x = rng.integers(0, 2, (rows, 3)).astype(bool)
        elif np.dtype(dtype).kind in "iu":
            info = np.iinfo(dtype)
            x = rng.integers(info.min, info.max, (rows, 3), dtype=dtype, endpoint=True)
            x[0, :2] = info.min, info.max
        else:
            x = (rng.standard_normal((rows, 3)) * 100).astype(dtype)
        values[f"x_{datatype.lower()}"] = x
    values["token"] = rng.integers(*TOKEN_RANGE, (rows, 2), endpoint=True).astype(np.int64)
    return values
