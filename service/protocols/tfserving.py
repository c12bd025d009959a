"""The TensorFlow Serving REST API, and :explain with the NumPy forward propagation.

Request formats (one of the two):
  {"instances": [row, ...]}  -> {"predictions": [...]}   a row is a list of the model's inputs,
                                                         an object {input_name: [...]}, or an
                                                         object keyed by every feature name
  {"inputs": tensor}         -> {"outputs": {...}}       a tensor, {input_name: tensor}, or
                                                         {feature_name: [column], ...}
Classifier answers carry the class label and its probability beside the raw output.
"""

from __future__ import annotations

import numpy as np
from flask import Blueprint, request
from werkzeug.exceptions import MethodNotAllowed

from service.errors import BadRequest, ModelNotFound
from service.protocols.common import (
    check_content_type,
    infer,
    json_response,
    parse_json,
    registry,
    resolve,
    settings,
)
from service.tensors import finite_float32, fit_to_model, may_hold_booleans, numbers

blueprint = Blueprint("tfserving", __name__)
VERBS = ("predict", "explain")


@blueprint.get("/v1/models/<name>")
@blueprint.get("/v1/models/<name>/versions/<version>")
def model_status(name: str, version: str | None = None):
    if ":" in name or (version and ":" in version):  # a :predict or :explain path, asked with GET
        raise MethodNotAllowed(valid_methods=["POST"])
    versions = registry().status(name)
    if version is not None:
        number = registry().version_number(name, version)
        if number not in versions:
            raise ModelNotFound(name, version)
        versions = {number: versions[number]}
    return json_response({"model_version_status": [
        {
            "version": str(number),
            "state": "AVAILABLE" if reason is None else "END",
            "status": {"error_code": "OK" if reason is None else "UNKNOWN",
                       "error_message": reason or ""},
        }
        for number, reason in sorted(versions.items(), reverse=True)
    ]})


def tensor_info(tensor: dict) -> dict:
    return {
        "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in tensor["shape"]],
                         "unknown_rank": False},
        "name": tensor["name"],
    }


@blueprint.get("/v1/models/<name>/metadata")
@blueprint.get("/v1/models/<name>/versions/<version>/metadata")
def model_metadata(name: str, version: str | None = None):
    model = resolve(name, version, "tfserving")
    card = model.card
    signature = {
        "inputs": {t["name"]: tensor_info(t) for t in card["inputs"]},
        "outputs": {t["name"]: tensor_info(t) for t in card["outputs"]},
        "method_name": "tensorflow/serving/predict",
    }
    return json_response({
        "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
        "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
    })


@blueprint.post("/v1/models/<name_verb>")
@blueprint.post("/v1/models/<name>/versions/<name_verb>")
def model_call(name_verb: str, name: str | None = None):
    """`name:verb`, or `name/versions/version:verb` (the second rule binds the version as name_verb)."""
    target, _, verb = name_verb.rpartition(":")
    if verb not in VERBS or not target:
        raise BadRequest(f"the path must end in :{' or :'.join(VERBS)}")
    model_name, version = (target, None) if name is None else (name, target)
    model = resolve(model_name, version, "tfserving" if verb == "predict" else "explain")
    check_content_type("application/json")
    body = request.get_data(cache=False)
    x, row_format = decode(parse_json(body), model, may_hold_booleans(body))
    return predict(model, x, row_format) if verb == "predict" else explain(model, x)


def decode(document: dict, model, check_booleans: bool) -> tuple[np.ndarray, bool]:
    signature = document.get("signature_name", "serving_default")
    if signature not in ("serving_default", ""):
        raise BadRequest(f"signature_name {signature!r} is unknown; the model has 'serving_default'")
    unknown = set(document) - {"instances", "inputs", "signature_name"}
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(sorted(map(repr, unknown)))}; "
                         "send 'instances' or 'inputs'")
    if ("instances" in document) == ("inputs" in document):
        raise BadRequest("send exactly one of 'instances' (rows) or 'inputs' (columns)")
    row_format = "instances" in document
    field = "instances" if row_format else "inputs"
    parse = rows if row_format else columns
    x = parse(document[field], model, check_booleans)
    x = finite_float32(x, field)
    return fit_to_model(x, model, settings().max_batch, field), row_format


def feature_names(model) -> list[str]:
    return [feature["name"] for feature in model.card["features"]]


def rows(instances, model, check_booleans: bool) -> np.ndarray:
    if not isinstance(instances, list) or not instances:
        raise BadRequest("field 'instances' must be a non-empty array of rows")
    if isinstance(instances[0], dict):
        names = feature_names(model)
        table = []
        for index, row in enumerate(instances):
            where = f"instances[{index}]"
            if not isinstance(row, dict):
                raise BadRequest(f"{where}: every row must be an object when the first one is")
            if set(row) == {model.input_name}:
                table.append(row[model.input_name])
            elif set(row) == set(names):
                table.append([row[name] for name in names])
            else:
                raise BadRequest(keys_problem(where, row, model, names))
        return numbers(table, "instances", check_booleans)
    return numbers(instances, "instances", check_booleans)


def columns(inputs, model, check_booleans: bool) -> np.ndarray:
    if isinstance(inputs, list):
        return numbers(inputs, "inputs", check_booleans)
    if not isinstance(inputs, dict):
        raise BadRequest("field 'inputs' must be an array or an object")
    names = feature_names(model)
    if set(inputs) == {model.input_name}:
        return numbers(inputs[model.input_name], f"inputs.{model.input_name}", check_booleans)
    if set(inputs) == set(names):
        cols = [numbers(inputs[name], f"inputs.{name}", check_booleans) for name in names]
        if any(col.ndim != 1 for col in cols) or len({len(col) for col in cols}) != 1:
            raise BadRequest("inputs: every feature must be a flat array of the same length")
        return np.stack(cols, axis=1)
    raise BadRequest(keys_problem("inputs", inputs, model, names))


def keys_problem(where: str, given: dict, model, names: list[str]) -> str:
    missing = [name for name in names if name not in given]
    unknown = [key for key in given if key not in names and key != model.input_name]
    parts = [f"missing {', '.join(map(repr, missing))}" if missing else "",
             f"unknown {', '.join(map(repr, unknown))}" if unknown else ""]
    return (f"{where}: expected the key {model.input_name!r} or every feature "
            f"({', '.join(names)}); " + "; ".join(p for p in parts if p))


def labelled(model, probabilities: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each row's class label and the probability of that class."""
    labels = model.card["labels"]
    if model.card["task"] == "binary":
        p = probabilities[:, 0]
        positive = p >= 0.5
        return [labels[int(k)] for k in positive], np.where(positive, p, 1.0 - p)
    best = np.argmax(probabilities, axis=1)
    return [labels[k] for k in best], probabilities[np.arange(len(best)), best]


def predict(model, x: np.ndarray, row_format: bool):
    results = infer(model, x)
    output_name = model.output_names[0]
    probabilities = results[output_name]
    labels, confidence = labelled(model, probabilities)
    if row_format:
        return json_response({"predictions": [
            {output_name: row, "label": label, "label_probability": float(p)}
            for row, label, p in zip(probabilities, labels, confidence, strict=True)
        ]})
    return json_response({"outputs": {output_name: probabilities, "label": labels,
                                      "label_probability": confidence}})


def explain(model, x: np.ndarray):
    """Every layer's activations from the NumPy forward propagation beside onnxruntime's answer."""
    onnx_out = infer(model, x)[model.output_names[0]]
    activations = model.network.activations(x)[1:]  # a1 .. aL; a0 is the preprocessed input
    labels, confidence = labelled(model, onnx_out)
    differences = np.max(np.abs(activations[-1] - onnx_out), axis=1)
    return json_response({
        "model_name": model.name,
        "model_version": str(model.version),
        "layers": [{"a": f"a{number}", **layer}
                   for number, layer in enumerate(model.card["layers"], start=1)],
        "explanations": [
            {
                "activations": {f"a{number}": a[row] for number, a in enumerate(activations, start=1)},
                "prediction": onnx_out[row],
                "label": labels[row],
                "label_probability": float(confidence[row]),
                "max_abs_difference": float(differences[row]),
            }
            for row in range(x.shape[0])
        ],
    })
