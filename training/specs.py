"""Model specs: one JSON file per model in training/specs/, checked before anything is trained."""

from __future__ import annotations

import json
from pathlib import Path

from training import TrainingError, data
from training.data import DATASET_NAMES

SPEC_DIR = Path(__file__).parent / "specs"
ACTIVATIONS = ("sigmoid", "relu", "linear", "softmax")
PREPROCESSING = ("standardize", "rescale", "none")
TASK_OUTPUTS = {"binary": "sigmoid", "multiclass": "softmax"}
CLASSES = {"demand": 2, "digits": 10, "digits-binary": 2}


class SpecError(TrainingError):
    """A spec that cannot be trained; the message names the field and the problem."""


def builtin_names() -> list[str]:
    return sorted(path.stem for path in SPEC_DIR.glob("*.json"))


def load(name_or_path: str) -> dict:
    """A built-in spec by model name, or a spec file by path."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = SPEC_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise SpecError(
                f"unknown model {name_or_path!r}; known: {', '.join(builtin_names())}"
            )
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SpecError(f"spec {path.name}: cannot read it as JSON ({error})") from None
    validate(spec, path.name, base=path.parent)
    if isinstance(spec["dataset"], dict):
        source = Path(spec["dataset"]["csv"]).name
        # A CSV path is relative to the spec's folder; training may run from anywhere.
        spec["dataset"] = {**spec["dataset"],
                           "csv": str(data.csv_path(spec["dataset"], path.parent).resolve())}
    else:
        source = spec["dataset"]
    spec.setdefault("description", f"{spec['name']}, trained on {source}")
    return spec


def _require(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise SpecError(f"spec {where}: {problem}")


def validate(spec: dict, where: str = "spec", base: Path | None = None) -> None:
    """Check a spec; a CSV data set is read and checked too, its relative path taken from `base`."""
    _require(isinstance(spec, dict), where, "must be a JSON object")
    for key, kind in (
        ("name", str), ("dataset", (str, dict)), ("task", str), ("input", str), ("output", str),
        ("preprocessing", str), ("layers", list), ("training", dict),
    ):
        what = "a data set name or a CSV object" if key == "dataset" else f"a {kind.__name__}"
        _require(isinstance(spec.get(key), kind), where, f"field {key!r} must be {what}")
    name = spec["name"]
    _require(
        name.replace("-", "").replace("_", "").isalnum() and name[0].isalnum(),
        where, f"field 'name' {name!r} must be letters, digits, '-' or '_'",
    )
    _require(isinstance(spec.get("description", ""), str), where, "field 'description' must be a string")
    dataset = spec.get("dataset")
    _require(isinstance(dataset, dict) or dataset in DATASET_NAMES, where,
             f"field 'dataset' must be one of {', '.join(DATASET_NAMES)}, or a CSV object "
             '{"csv": FILE, "label": COLUMN}')
    _require(spec["task"] in TASK_OUTPUTS, where,
             f"field 'task' must be one of {', '.join(TASK_OUTPUTS)}")
    _require(spec["preprocessing"] in PREPROCESSING, where,
             f"field 'preprocessing' must be one of {', '.join(PREPROCESSING)}")
    _require(len(spec["layers"]) >= 1, where, "field 'layers' must list at least one layer")
    for number, layer in enumerate(spec["layers"], start=1):
        at = f"layers[{number - 1}]"
        _require(isinstance(layer, dict), where, f"{at} must be an object")
        units = layer.get("units")
        _require(isinstance(units, int) and not isinstance(units, bool) and units > 0,
                 where, f"{at}.units must be a positive integer")
        _require(layer.get("activation") in ACTIVATIONS, where,
                 f"{at}.activation must be one of {', '.join(ACTIVATIONS)}")
        _require(isinstance(layer.get("name"), str), where, f"{at}.name must be a string")
    last = spec["layers"][-1]
    if isinstance(dataset, dict):
        try:
            table = data.read_table(dataset, base)
        except data.CsvError as error:
            raise SpecError(f"spec {where}: {error}") from None
        classes = len(table.labels)
        shown = f"{dataset['csv']} (column {table.label!r})"
        high = float(table.x.max())
        _require(spec["preprocessing"] != "rescale" or high > 0, where,
                 f"preprocessing 'rescale' divides by the largest feature value, {high:g} in "
                 f"{dataset['csv']}; use 'standardize'")
    else:
        classes, shown = CLASSES[dataset], dataset
    expected_units = 1 if spec["task"] == "binary" else classes
    _require(last["activation"] == TASK_OUTPUTS[spec["task"]], where,
             f"the last layer of a {spec['task']} model must use {TASK_OUTPUTS[spec['task']]}")
    _require(last["units"] == expected_units, where,
             f"the last layer must have {expected_units} units for {shown}")
    _require(spec["task"] == "multiclass" or classes == 2, where,
             f"dataset {shown} has {classes} classes; use task 'multiclass'")
    training = spec["training"]
    for key, kind in (("seed", int), ("epochs", int), ("batch_size", int),
                      ("learning_rate", (int, float))):
        value = training.get(key)
        _require(isinstance(value, kind) and not isinstance(value, bool) and value >= 0,
                 where, f"training.{key} must be a non-negative number")
    _require(training["epochs"] > 0 and training["batch_size"] > 0, where,
             "training.epochs and training.batch_size must be positive")
