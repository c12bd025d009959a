"""Small ONNX graphs built with onnx.helper (no TensorFlow), and model versions made of them:
model.onnx beside a hand-written card.json (docs/card.md) as an import of a plain ONNX file.

    model = two_in_two_out()
    folder = write_version(repository, "imported", 1, model, ranges={"tokens": [0, 9]},
                           labels={"score": ["no", "yes"]})
    outputs = run(folder / "model.onnx", {"tokens": ..., "numbers": ...})  # onnxruntime, directly

`shaped(TensorProto.UINT64, ("rank0", "rank1"))` gives outputs of chosen ranks and one datatype.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# ONNX element types and their v2 datatypes.
DATATYPES = {
    TensorProto.BOOL: "BOOL",
    TensorProto.UINT8: "UINT8", TensorProto.UINT16: "UINT16", TensorProto.UINT32: "UINT32",
    TensorProto.UINT64: "UINT64", TensorProto.INT8: "INT8", TensorProto.INT16: "INT16",
    TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.FLOAT16: "FP16",
    TensorProto.FLOAT: "FP32", TensorProto.DOUBLE: "FP64",
}


def two_in_two_out() -> onnx.ModelProto:
    """tokens INT64 [-1, 3] and numbers FP32 [-1, 2] -> score FP32 [-1, 1] and flag BOOL [-1, 1]:

    score = sigmoid(float(tokens) @ [0.5, -0.25, 1.0] + numbers @ [2.0, -1.5] - 0.75)
    flag = score > 0.5
    """
    initializers = [
        numpy_helper.from_array(np.array([[0.5], [-0.25], [1.0]], dtype=np.float32), "token_weights"),
        numpy_helper.from_array(np.array([[2.0], [-1.5]], dtype=np.float32), "number_weights"),
        numpy_helper.from_array(np.array([-0.75], dtype=np.float32), "bias"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
    ]
    nodes = [
        helper.make_node("Cast", ["tokens"], ["tokens_float"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["tokens_float", "token_weights"], ["from_tokens"]),
        helper.make_node("MatMul", ["numbers", "number_weights"], ["from_numbers"]),
        helper.make_node("Add", ["from_tokens", "from_numbers"], ["sum"]),
        helper.make_node("Add", ["sum", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
        helper.make_node("Greater", ["score", "half"], ["flag"]),
    ]
    graph = helper.make_graph(
        nodes, "two_in_two_out",
        inputs=[helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", 3]),
                helper.make_tensor_value_info("numbers", TensorProto.FLOAT, ["batch", 2])],
        outputs=[helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1]),
                 helper.make_tensor_value_info("flag", TensorProto.BOOL, ["batch", 1])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tests.onnx_models")
    model.ir_version = 8  # the IR of opset 17, which every onnxruntime of these pins reads
    onnx.checker.check_model(model, full_check=True)
    return model


# The outputs `shaped` can give, each made of its input x [-1, 3]: the nodes and the card's shape.
SHAPED = {
    "rank0": ([("Gather", ["x", "zero"], ["first"], {"axis": 0}),
               ("Gather", ["first", "one"], ["rank0"], {"axis": 0})], []),  # x[0, 1]
    "rank1": ([("Gather", ["x", "one"], ["rank1"], {"axis": 1})], [-1]),  # x[:, 1]
    "rank2": ([("Identity", ["x"], ["rank2"], {})], [-1, 3]),  # x
    "rank3": ([("Reshape", ["x", "deep"], ["rank3"], {})], [-1, 3, 1]),
    "copy": ([("Identity", ["x"], ["copy"], {})], [-1, 3]),  # x again, under another name
    "first_row": ([("Gather", ["x", "zero"], ["first_row"], {"axis": 0})], [3]),  # x[0]: not batched
}


def shaped(elem_type: int, outputs: tuple[str, ...]) -> onnx.ModelProto:
    """x [-1, 3] of one element type -> the outputs of SHAPED named, of the same type, made of
    x's values by Gather, Identity and Reshape (which onnxruntime runs for every element type)."""
    initializers = [
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([0, 3, 1], dtype=np.int64), "deep"),  # 0 keeps the batch
    ]
    nodes = [helper.make_node(op, inputs, names, **attributes)
             for output in outputs for op, inputs, names, attributes in SHAPED[output][0]]
    symbolic = [helper.make_tensor_value_info(
        name, elem_type, ["batch" if d == -1 else d for d in SHAPED[name][1]]) for name in outputs]
    graph = helper.make_graph(nodes, "shaped", [helper.make_tensor_value_info("x", elem_type, ["batch", 3])],
                              symbolic, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tests.onnx_models")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def signature(values: list[onnx.ValueInfoProto]) -> list[dict]:
    """The card's tensors of graph inputs or outputs: -1 for every dimension without a fixed size."""
    tensors = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        tensors.append({"name": value.name, "datatype": DATATYPES[tensor.elem_type], "shape": shape})
    return tensors


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_version(repository: Path, name: str, version: int, model: onnx.ModelProto, *,
                  description: str = "", ranges: dict | None = None, labels: dict | None = None,
                  metrics: dict | None = None, file: str | None = None, limits: dict | None = None) -> Path:
    """<repository>/<name>/<version>/ with model.onnx and a card.json of a plain ONNX import;
    ranges and labels are keyed by tensor name; `limits`, the card's (docs/card.md). Returns the
    version folder."""
    folder = repository / name / str(version)
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    inputs, outputs = signature(model.graph.input), signature(model.graph.output)
    for tensor in inputs:
        if tensor["name"] in (ranges or {}):
            tensor["range"] = list(ranges[tensor["name"]])
    for tensor in outputs:
        if tensor["name"] in (labels or {}):
            tensor["labels"] = list(labels[tensor["name"]])
    card = {
        "name": name,
        "version": version,
        "description": description,
        "platform": "onnx_onnxv1",
        "source": {"kind": "onnx", "file": file or f"{name}.onnx"},
        "inputs": inputs,
        "outputs": outputs,
        "parity": {"reference": None, "data": None, "rows": 0, "max_abs_difference": None,
                   "tolerance": None},
        "metrics": metrics or {},
        "files": {"model.onnx": {"sha256": sha256(folder / "model.onnx")}},
        "opset": OPSET,
        "libraries": {"onnx": onnx.__version__},
    }
    if limits is not None:
        card["limits"] = limits
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder


def run(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of the graph at `path` for these inputs, by onnxruntime directly."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def conv_network(channels: int = 256, layers: int = 4, seed: int = 0) -> onnx.ModelProto:
    """image FP32 [-1, 3, 16, 16] -> features FP32 [-1, channels]: `layers` 3x3 convolutions with
    ReLU and random weights (channels² x 9 x 4 bytes each: 256 channels, 4 layers ≈ 7 MB; 512, 6 ≈
    45 MB), then a global average. What onnxruntime re-lays (NCHWc) at ORT_ENABLE_ALL."""
    rng = np.random.default_rng(seed)
    nodes, initializers, previous, width = [], [], "image", 3
    for index in range(layers):
        scale = np.sqrt(2.0 / (width * 9))
        initializers += [
            numpy_helper.from_array((rng.standard_normal((channels, width, 3, 3)) * scale).astype(np.float32),
                                    f"kernel{index}"),
            numpy_helper.from_array((rng.standard_normal(channels) * 0.01).astype(np.float32),
                                    f"bias{index}")]
        nodes += [helper.make_node("Conv", [previous, f"kernel{index}", f"bias{index}"], [f"conv{index}"],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"conv{index}"], [f"relu{index}"])]
        previous, width = f"relu{index}", channels
    nodes += [helper.make_node("GlobalAveragePool", [previous], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["features"])]
    graph = helper.make_graph(
        nodes, "conv_network",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", channels])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def dense_network(width: int = 2048, layers: int = 4, seed: int = 0) -> onnx.ModelProto:
    """features FP32 [-1, width] -> scores FP32 [-1, width]: `layers` MatMul + Add + ReLU of
    width x width random weights (2048, 4: 64 MB), what onnxruntime prepacks per session."""
    rng = np.random.default_rng(seed)
    nodes, initializers, previous = [], [], "features"
    for index in range(layers):
        initializers += [
            numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
                                    f"weights{index}"),
            numpy_helper.from_array(np.zeros(width, np.float32), f"bias{index}")]
        nodes += [helper.make_node("MatMul", [previous, f"weights{index}"], [f"product{index}"]),
                  helper.make_node("Add", [f"product{index}", f"bias{index}"], [f"sum{index}"]),
                  helper.make_node("Relu", [f"sum{index}"], [f"layer{index}"])]
        previous = f"layer{index}"
    nodes.append(helper.make_node("Identity", [previous], ["scores"]))
    graph = helper.make_graph(
        nodes, "dense_network",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", width])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def runaway_loop(trips_per_unit: int = 1_000_000) -> onnx.ModelProto:
    """features FP32 [-1, 4] -> probability FP32 [-1, 1], demand's signature, but a Loop runs
    int(sum(features)) * trips_per_unit times a 64 x 64 MatMul and Tanh: demand's example row
    [19.99, 4.5, 2000, 7] asks for two billion iterations (hours), a row summing below 1
    for none (the answer is then 64, the sum of the Loop's starting ones)."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["carried", "weights"], ["product"]),
         helper.make_node("Tanh", ["product"], ["carried_out"]),
         helper.make_node("Identity", ["going"], ["going_out"])], "iteration",
        [helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
         helper.make_tensor_value_info("going", TensorProto.BOOL, []),
         helper.make_tensor_value_info("carried", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("going_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("carried_out", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(np.full((64, 64), 0.01, np.float32), "weights")])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["features"], ["total"], keepdims=0),
         helper.make_node("Cast", ["total"], ["units"], to=TensorProto.INT64),
         helper.make_node("Mul", ["units", "per_unit"], ["trips"]),
         helper.make_node("Loop", ["trips", "always", "start"], ["carried"], body=body),
         helper.make_node("ReduceSum", ["carried"], ["summed"], keepdims=1),
         helper.make_node("Reshape", ["summed", "one_by_one"], ["probability"])], "runaway_loop",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.array(trips_per_unit, np.int64), "per_unit"),
         numpy_helper.from_array(np.array(True), "always"),
         numpy_helper.from_array(np.ones((1, 64), np.float32), "start"),
         numpy_helper.from_array(np.array([1, 1], np.int64), "one_by_one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
