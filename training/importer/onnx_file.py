"""Reading a plain `.onnx` file.

onnx.checker (full check) and an onnxruntime load; the signature is read from the graph
(symbolic or missing dimensions become -1), and the file is copied unchanged as model.onnx.
There is nothing to compare it with: the card's parity.reference is null. A scikit-learn
classifier converted by skl2onnx imports when converted without ZipMap (its probabilities as a
sequence of maps, which no card datatype declares; refused with how to convert).
"""

from __future__ import annotations

from pathlib import Path

from modelcard.tables import DATATYPE_OF_ONNX, DATATYPES
from training import one_line
from training.importer.loaded import ImportRefused, Loaded, Tensor, declared_tensor, unique_names


def load_onnx(path: Path) -> Loaded:
    import onnx
    import onnxruntime

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # DecodeError and friends
        raise ImportRefused(f"{path.name}: not an ONNX model ({one_line(error)})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer):
        raise ImportRefused(f"{path.name}: keeps its weights in external data files; save it as "
                            "one .onnx file")
    try:
        onnx.checker.check_model(graph, full_check=True)
    except Exception as error:
        raise ImportRefused(f"{path.name}: onnx.checker refuses it ({one_line(error)})") from None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ImportRefused(f"{path.name}: onnxruntime cannot load it ({one_line(error)})") from None

    def tensor(role: str, node) -> Tensor:
        if node.type == "tensor(string)":
            raise ImportRefused(f"{path.name}: {role} {node.name!r} is a string (BYTES) tensor; the "
                                f"card serves numbers and booleans only")
        datatype = DATATYPE_OF_ONNX.get(node.type)
        return declared_tensor(
            path.name, role, node.name, DATATYPES[datatype].name if datatype else None,
            f"type {node.type}",
            [d if isinstance(d, int) and d >= 0 else None for d in node.shape]
            if isinstance(node.shape, list) else None,
        )

    # Before the tensors, so that a classifier trained on string classes hears of ZipMap first.
    for node in session.get_outputs():
        if node.type.startswith("seq(map("):
            raise ImportRefused(f"{path.name}: output {node.name!r} is a sequence of maps ({node.type}, "
                                "scikit-learn's ZipMap), which the card cannot declare; export it "
                                "without: pass options={'zipmap': False} to skl2onnx.to_onnx")
    inputs = [tensor("input", node) for node in session.get_inputs()]
    outputs = [tensor("output", node) for node in session.get_outputs()]
    unique_names(path.name, inputs, outputs)
    return Loaded(path, "onnx", inputs, outputs, keep=[graph])
