"""A model whose memory comes from its input: `expand_network(k)` has demand's signature (features
FP32 [-1, 4] -> probability FP32 [-1, 1]) and, for a row summing to s, expands a [1, 64] constant
to [int(s) * k, 64] floats before summing it: 256 * k * int(s) bytes in one tensor (demand's
example row [19.99, 4.5, 2000, 7] at k = 10000: 5.2 GB). probability = 64 * int(sum of the
batch) * k, as `expected` computes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.onnx_models import OPSET

EXAMPLE_ROW = [19.99, 4.5, 2000.0, 7.0]  # demand's example


def expand_network(k: int = 10_000) -> onnx.ModelProto:
    initializers = [
        numpy_helper.from_array(np.array([k], dtype=np.int64), "k"),
        numpy_helper.from_array(np.array([64], dtype=np.int64), "width"),
        numpy_helper.from_array(np.ones((1, 64), dtype=np.float32), "row"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([1, 1], dtype=np.int64), "one_by_one"),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["features"], ["total"], keepdims=1),  # [1, 1]
        helper.make_node("Cast", ["total"], ["whole"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["whole", "one"], ["flat"]),  # [1]
        helper.make_node("Mul", ["flat", "k"], ["rows"]),
        helper.make_node("Concat", ["rows", "width"], ["shape"], axis=0),  # [rows, 64]
        helper.make_node("Expand", ["row", "shape"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["summed"], keepdims=1),
        helper.make_node("Reshape", ["summed", "one_by_one"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes, "expand_network",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tests.memory_hungry")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def asked_bytes(features: np.ndarray, k: int = 10_000) -> int:
    """The bytes of the expanded tensor for these features."""
    return int(np.float32(features.astype(np.float32).sum())) * k * 64 * 4


def expected(features: np.ndarray, k: int = 10_000) -> np.ndarray:
    return np.array([[64.0 * int(np.float32(features.astype(np.float32).sum())) * k]], dtype=np.float32)
