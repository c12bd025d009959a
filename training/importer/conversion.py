"""A Keras model or SavedModel to a checked ONNX graph.

Through training.export.to_onnx, the built-in models' path (opset 17; ONNX input names = the
model's input names, output names = its output names: the output layers' names, a dict output's
keys, or a Sequential model's last layer). The graph must then keep the loaded signature: the
same names, dtypes and dynamic dimensions.
"""

from __future__ import annotations

import logging

import numpy as np

from training import one_line, quiet
from training.importer.loaded import ImportRefused, Loaded


def export_graph(loaded: Loaded):
    import tensorflow as tf

    from training import export  # TensorFlow: only for the models it runs

    specs = [tf.TensorSpec([None if d == -1 else d for d in t.shape], tf.as_dtype(t.dtype), name=t.name)
             for t in loaded.inputs]
    with quiet.python_logs() as records:
        try:
            graph = export.to_onnx(loaded.call, specs)
        except export.ExportError as error:
            logged = [r.getMessage().splitlines()[0] for r in records if r.levelno >= logging.ERROR]
            detail = f"; tf2onnx: {logged[0][:200]}" if logged else ""
            raise ImportRefused(f"{loaded.path.name}: {error}{detail}") from None
        except Exception as error:  # tracing the model failed
            raise ImportRefused(f"{loaded.path.name}: TensorFlow cannot trace the model "
                                f"({one_line(error)})") from None
    check_signature(loaded, graph)
    return graph


def check_signature(loaded: Loaded, graph) -> None:
    """The exported graph's inputs and outputs: the model's names, dtypes and dynamic dimensions."""
    import onnx

    def describe(value) -> tuple[str, list]:
        kind = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)).name
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
        return dtype, dims

    name = loaded.path.name
    for value, tensor in zip(graph.graph.input, loaded.inputs, strict=True):
        dtype, dims = describe(value)
        if dtype != tensor.dtype.name or dims != list(tensor.shape):
            raise ImportRefused(f"{name}: the exported input {tensor.name!r} is {dtype} {dims}, the "
                                f"model's is {tensor.dtype.name} {list(tensor.shape)}")
    produced = [value.name for value in graph.graph.output]
    if sorted(produced) != sorted(t.name for t in loaded.outputs):
        raise ImportRefused(f"{name}: the exported graph's outputs are {produced}, expected "
                            f"{[t.name for t in loaded.outputs]}")
    by_name = {value.name: value for value in graph.graph.output}
    for tensor in loaded.outputs:
        dtype, _ = describe(by_name[tensor.name])
        if dtype != tensor.dtype.name:
            raise ImportRefused(f"{name}: the exported output {tensor.name!r} is {dtype}, the "
                                f"model's is {tensor.dtype.name}")
    # The card lists outputs in graph order.
    loaded.outputs.sort(key=lambda t: produced.index(t.name))
