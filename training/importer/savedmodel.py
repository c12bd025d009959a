"""Reading a TensorFlow SavedModel folder (the one holding saved_model.pb).

tf.saved_model.load and its `serving_default` signature: the signature's argument names become
the ONNX input names and its output keys the output names (Keras' `model.export` calls them
output_0, output_1, ...). tf.saved_model.load is used rather than keras.layers.TFSMLayer: the
signature's names, dtypes and shapes are what the graph must keep, and TFSMLayer hides them
behind one layer. Its layers are not Keras objects any more, so a SavedModel never gets a
forward section.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training import one_line, quiet
from training.importer.loaded import ImportRefused, Loaded, Tensor, declared_tensor, unique_names


def load_savedmodel(path: Path) -> Loaded:
    import tensorflow as tf

    try:
        with quiet.python_logs():
            saved = tf.saved_model.load(str(path))
    except Exception as error:
        raise ImportRefused(f"{path.name}: TensorFlow cannot load the SavedModel "
                            f"({one_line(error)})") from None
    signature = getattr(saved, "signatures", {}).get("serving_default")
    if signature is None:
        raise ImportRefused(f"{path.name}: the SavedModel has no serving_default signature")
    arguments, keywords = signature.structured_input_signature
    if arguments:
        raise ImportRefused(f"{path.name}: serving_default takes positional arguments; "
                            "expected named inputs")

    def tensor(role: str, name: str, spec) -> Tensor:
        dtype = np.dtype(spec.dtype.as_numpy_dtype).name if spec.dtype.is_numpy_compatible else None
        return declared_tensor(path.name, role, name, dtype, f"dtype {spec.dtype.name}",
                               spec.shape.as_list() if spec.shape.rank is not None else None,
                               string=spec.dtype == tf.string)

    inputs = [tensor("input", name, spec) for name, spec in keywords.items()]
    if not isinstance(signature.structured_outputs, dict):
        raise ImportRefused(f"{path.name}: serving_default does not return named outputs")
    outputs = [tensor("output", name, spec) for name, spec in signature.structured_outputs.items()]
    unique_names(path.name, inputs, outputs)
    names = [t.name for t in inputs]

    def call(*arguments):
        return signature(**dict(zip(names, arguments, strict=True)))

    return Loaded(path, "savedmodel", inputs, outputs, call, keep=[saved, signature])
