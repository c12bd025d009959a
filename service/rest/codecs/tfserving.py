"""The TensorFlow Serving REST API's predict documents, and the explain answer.

Request formats (one of the two):
  {"instances": [row, ...]}  -> {"predictions": [...]}   a row is the model's one input, an
                                                         object keyed by input name, or (for a
                                                         table input) by every feature name
  {"inputs": tensor}         -> {"outputs": ...}         a tensor for the model's one input, an
                                                         object keyed by input name, or by
                                                         every feature name (columns)
Answers follow TF Serving: a model with one output gives its values; with several, an object
per row (or per column set) keyed by output name. Outputs with class labels in the card add
the label of each row and its probability: `label` and `label_probability` for a model with one
output, `<output>_label` and `<output>_label_probability` otherwise (and whenever the short
names are an output's own, as for an output called `label`).
Columns answer outputs of any rank (a rank-0 one as a bare value). Rows follow TF Serving's
rule: every output has a first dimension, the same in all, or the answer is a 400 naming the
output that breaks it.
"""

from __future__ import annotations

import numpy as np

from modelcard.card import ModelCard, TensorSpec
from service.core.errors import BadRequest, quote
from service.core.tensors import numbers
from service.core.types import InferenceRequest, InferenceResponse
from service.rest.codecs.json import native

SIGNATURE = "serving_default"


def decode_request(document: dict, card: ModelCard, check_booleans: bool) -> tuple[InferenceRequest, bool]:
    """The request, and whether it came as rows (instances) rather than columns (inputs)."""
    signature = document.get("signature_name", SIGNATURE)
    if signature not in (SIGNATURE, ""):
        raise BadRequest(f"signature_name {quote(signature)} is unknown; the model has {SIGNATURE!r}")
    unknown = sorted(set(document) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(map(quote, unknown[:5]))}; "
                         "send 'instances' or 'inputs'")
    if ("instances" in document) == ("inputs" in document):
        raise BadRequest("send exactly one of 'instances' (rows) or 'inputs' (columns)")
    if "instances" in document:
        return InferenceRequest(rows(document["instances"], card, check_booleans)), True
    return InferenceRequest(columns(document["inputs"], card, check_booleans)), False


def rows(instances, card: ModelCard, check_booleans: bool) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise BadRequest("field 'instances' must be a non-empty array of rows")
    names = card.input_names
    if not isinstance(instances[0], dict):
        if len(names) != 1:
            raise BadRequest(f"model {card.name!r} takes {len(names)} inputs: each instance must be "
                             f"an object keyed by {', '.join(map(repr, names))}")
        return {names[0]: numbers(instances, "instances", check_booleans)}
    features = [feature.name for feature in card.table_features]
    per_input: dict[str, list] = {name: [] for name in names}
    for index, row in enumerate(instances):
        where = f"instances[{index}]"
        if not isinstance(row, dict):
            raise BadRequest(f"{where}: every row must be an object when the first one is")
        if set(row) == set(names):
            for name in names:
                per_input[name].append(row[name])
        elif features and set(row) == set(features):
            per_input[names[0]].append([row[feature] for feature in features])
        else:
            raise BadRequest(keys_problem(where, row, names, features))
    return {name: numbers(values, f"instances[].{name}", check_booleans)
            for name, values in per_input.items()}


def columns(inputs, card: ModelCard, check_booleans: bool) -> dict[str, np.ndarray]:
    names = card.input_names
    if isinstance(inputs, list):
        if len(names) != 1:
            raise BadRequest(f"model {card.name!r} takes {len(names)} inputs: 'inputs' must be an "
                             f"object keyed by {', '.join(map(repr, names))}")
        return {names[0]: numbers(inputs, "inputs", check_booleans)}
    if not isinstance(inputs, dict):
        raise BadRequest("field 'inputs' must be an array or an object")
    if set(inputs) == set(names):
        return {name: numbers(inputs[name], f"inputs.{name}", check_booleans) for name in names}
    features = [feature.name for feature in card.table_features]
    if features and set(inputs) == set(features):
        cols = [numbers(inputs[name], f"inputs.{name}", check_booleans) for name in features]
        if any(col.ndim != 1 for col in cols) or len({len(col) for col in cols}) != 1:
            raise BadRequest("inputs: every feature must be a flat array of the same length")
        return {names[0]: np.stack(cols, axis=1)}
    raise BadRequest(keys_problem("inputs", inputs, names, features))


def keys_problem(where: str, given: dict, names, features: list[str]) -> str:
    expected = set(names) | set(features)
    missing = [name for name in (features or names) if name not in given]
    unknown = [key for key in given if key not in expected]
    parts = [f"missing {', '.join(map(repr, missing))}" if missing else "",
             f"unknown {', '.join(map(quote, unknown[:5]))}" if unknown else ""]
    what = f"the key(s) {', '.join(map(repr, names))}"
    if features:
        what += f" or every feature ({', '.join(features)})"
    return f"{where}: expected {what}; " + "; ".join(p for p in parts if p)


def labelled(spec: TensorSpec, values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each row's class label and the probability (or score) of that class."""
    rows = values.reshape(len(values), -1)
    if spec.binary_classes:
        p = rows[:, 0]
        positive = p >= 0.5
        return [spec.labels[int(k)] for k in positive], np.where(positive, p, 1.0 - p)
    best = np.argmax(rows, axis=1)
    return [spec.labels[k] for k in best], rows[np.arange(len(best)), best]


def encode_predict(response: InferenceResponse, row_format: bool) -> dict:
    card = response.model.card
    outputs = {name: native(values) for name, values in response.outputs.items()}
    labels = {}
    for name, values in outputs.items():
        spec = card.output(name)
        if spec.labels and values.ndim >= 1 and len(values):
            for prefix in ("" if len(outputs) == 1 else f"{name}_", f"{name}_"):
                keys = prefix + "label", prefix + "label_probability"
                if not set(keys) & set(outputs):  # never in place of an output's own values
                    labels[keys[0]], labels[keys[1]] = labelled(spec, values)
                    break
    columns = {**outputs, **labels}
    (first, *others) = columns.values()  # one output without labels gives its values, unwrapped
    if not row_format:
        return {"outputs": columns if others else first}
    count = batch_of(outputs)
    if not others:
        return {"predictions": first}
    return {"predictions": [{key: values[row] for key, values in columns.items()} for row in range(count)]}


def batch_of(outputs: dict) -> int:
    """The rows of a row format answer: TF Serving's rule, every output has a first dimension and
    the same one (an output without it belongs to no row, and repeating or cutting it would
    answer something the model did not)."""
    count, first = None, None
    for name, values in outputs.items():
        if values.ndim == 0:
            raise BadRequest(f"output {name!r} is a scalar, without a first dimension to split into "
                             "rows; send 'inputs' (columns) instead of 'instances' to get it")
        if count is None:
            count, first = len(values), name
        elif len(values) != count:
            raise BadRequest(f"output {name!r} has {len(values)} in its first dimension and output "
                             f"{first!r} {count}: rows need the same in every output; send 'inputs' "
                             "(columns) instead of 'instances'")
    return count


def encode_explain(response: InferenceResponse, activations: list[np.ndarray]) -> dict:
    """Every layer's activations from the NumPy forward propagation beside onnxruntime's answer."""
    model = response.model
    forward = model.card.forward
    (prediction,) = response.outputs.values()
    spec = model.card.output(forward["output"])
    labels, confidence = labelled(spec, prediction) if spec.labels else (None, None)
    differences = np.max(np.abs(activations[-1] - prediction), axis=1)
    explanations = []
    for row in range(len(prediction)):
        explanation = {
            "activations": {f"a{number}": a[row] for number, a in enumerate(activations, start=1)},
            "prediction": prediction[row],
            "max_abs_difference": float(differences[row]),
        }
        if labels is not None:
            explanation["label"] = labels[row]
            explanation["label_probability"] = float(confidence[row])
        explanations.append(explanation)
    return {
        "model_name": model.name,
        "model_version": str(model.version),
        "output": forward["output"],  # the output that `prediction` and the last layer reproduce
        "layers": [{"a": f"a{number}", **layer} for number, layer in enumerate(forward["layers"], start=1)],
        "explanations": explanations,
    }


TF_TYPES = {
    "BOOL": "DT_BOOL", "UINT8": "DT_UINT8", "UINT16": "DT_UINT16", "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64", "INT8": "DT_INT8", "INT16": "DT_INT16", "INT32": "DT_INT32",
    "INT64": "DT_INT64", "FP16": "DT_HALF", "FP32": "DT_FLOAT", "FP64": "DT_DOUBLE",
}


def tensor_info(spec: TensorSpec) -> dict:
    return {
        "dtype": TF_TYPES[spec.datatype],
        "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in spec.shape], "unknown_rank": False},
        "name": spec.name,
    }


def encode_metadata(card: ModelCard) -> dict:
    signature = {
        "inputs": {spec.name: tensor_info(spec) for spec in card.inputs},
        "outputs": {spec.name: tensor_info(spec) for spec in card.outputs},
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": card.name, "signature_name": "", "version": str(card.version)},
        "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
    }
