"""The data sets: synthetic T-shirt demand from a seeded generative model, and sklearn's digits.

Every function here is deterministic for a given seed, and every split carries a
fingerprint (sha256 of its arrays) that goes into the model card.

The demand generator follows the lesson's diagram. Four inputs, each drawn uniformly:

    price          USD per shirt          5 .. 50
    shipping_cost  USD per order          0 .. 15
    marketing      USD per month          0 .. 5000
    material       quality score          1 .. 10

Three hidden factors, each a logistic of a weighted sum of the inputs it depends on:

    affordability = sigmoid((35 - price - shipping_cost) / 6)
    awareness     = sigmoid((marketing - 2000) / 700)
    quality       = sigmoid((material - 5) / 1.2 + (price - 25) / 12)

and the probability of being a top seller, a logistic of the three:

    p = sigmoid(6 * (affordability + awareness + quality) - 9.5)

The label is drawn as Bernoulli(p). No classifier can beat the rule "predict top seller
when p >= 0.5" on average; its expected accuracy E[max(p, 1 - p)] is the Bayes accuracy,
which `demand_bayes_accuracy` estimates. A 4 -> 3 sigmoid -> 1 sigmoid network can represent
this generator exactly, so a trained model should come close to it.

A spec may instead name a CSV file of its own (`load_csv`): a header row, numeric feature
columns and a label column of text or numbers. It is checked when the spec is loaded (a blank
cell, text in a numeric column, a single class or one too small to split are refused with the
file, line and column) and split exactly like the built-in data.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import TrainingError

DEMAND_FEATURES = (
    {"name": "price", "unit": "USD per shirt", "min": 5.0, "max": 50.0},
    {"name": "shipping_cost", "unit": "USD per order", "min": 0.0, "max": 15.0},
    {"name": "marketing", "unit": "USD per month", "min": 0.0, "max": 5000.0},
    {"name": "material", "unit": "quality score", "min": 1.0, "max": 10.0},
)
DIGIT_FEATURES = tuple(
    {"name": f"pixel_{row}_{col}", "unit": "intensity", "min": 0.0, "max": 16.0}
    for row in range(8)
    for col in range(8)
)
DEMAND_SAMPLES = 10_000
DATASET_NAMES = ("demand", "digits", "digits-binary")
CSV_KEYS = ("csv", "label", "features", "units")
# With at least 10 rows a class gets at least 2 test, 1 validation and 6 training rows from _split.
CSV_MIN_CLASS_ROWS = 10
FLOAT32_MAX = float(np.finfo(np.float32).max)


class CsvError(TrainingError):
    """A CSV data set that cannot be trained on; the message names the file, line and column."""


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # float32, (n, features)
    y: np.ndarray  # int64, (n,)


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    features: tuple[dict, ...]
    labels: tuple[str, ...]
    train: Split
    validation: Split
    test: Split
    extra_metrics: dict

    def fingerprint(self) -> dict:
        """sha256 over each split's arrays, so a card names exactly the data it was tested on."""
        def digest(split: Split) -> str:
            h = hashlib.sha256()
            h.update(np.ascontiguousarray(split.x).tobytes())
            h.update(np.ascontiguousarray(split.y).tobytes())
            return h.hexdigest()

        return {
            "name": self.name,
            "description": self.description,
            "sizes": {part: len(getattr(self, part).y) for part in ("train", "validation", "test")},
            "sha256": {part: digest(getattr(self, part)) for part in ("train", "validation", "test")},
        }


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def demand_probability(x: np.ndarray) -> np.ndarray:
    """The generator's true P(top seller | inputs), for rows of (price, shipping, marketing, material)."""
    price, shipping, marketing, material = (x[:, i].astype(np.float64) for i in range(4))
    affordability = _sigmoid((35.0 - price - shipping) / 6.0)
    awareness = _sigmoid((marketing - 2000.0) / 700.0)
    quality = _sigmoid((material - 5.0) / 1.2 + (price - 25.0) / 12.0)
    return _sigmoid(6.0 * (affordability + awareness + quality) - 9.5)


def demand_inputs(rng: np.random.Generator, n: int) -> np.ndarray:
    columns = [rng.uniform(f["min"], f["max"], n) for f in DEMAND_FEATURES]
    return np.stack(columns, axis=1).astype(np.float32)


def demand_bayes_accuracy(seed: int = 0, n: int = 1_000_000) -> float:
    """Monte Carlo estimate of E[max(p, 1 - p)], the best accuracy any classifier can expect."""
    p = demand_probability(demand_inputs(np.random.default_rng(seed), n))
    return float(np.mean(np.maximum(p, 1.0 - p)))


def _split(x, y, seed, validation=0.15, test=0.2) -> tuple[Split, Split, Split]:
    """Stratified, seeded train / validation / test split."""
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=validation / (1 - test), stratify=y_rest, random_state=seed
    )
    return Split(x_train, y_train), Split(x_val, y_val), Split(x_test, y_test)


def load_demand(seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = demand_inputs(rng, DEMAND_SAMPLES)
    p = demand_probability(x)
    y = (rng.uniform(size=DEMAND_SAMPLES) < p).astype(np.int64)
    train, validation, test = _split(x, y, seed)
    p_test = demand_probability(test.x)
    return Dataset(
        name="demand",
        description="synthetic T-shirt sales from the seeded generator in training/data.py",
        features=DEMAND_FEATURES,
        labels=("not top seller", "top seller"),
        train=train,
        validation=validation,
        test=test,
        extra_metrics={
            "bayes_accuracy": round(demand_bayes_accuracy(seed), 4),
            "bayes_rule_test_accuracy": round(float(np.mean((p_test >= 0.5) == test.y)), 4),
        },
    )


def load_digits_dataset(seed: int = 0, binary: bool = False) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()  # bundled with scikit-learn: nothing is downloaded
    x, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    if binary:
        keep = y <= 1
        x, y = x[keep], y[keep]
    train, validation, test = _split(x, y, seed)
    return Dataset(
        name="digits-binary" if binary else "digits",
        description="scikit-learn load_digits: 8x8 images, pixel intensities 0-16"
        + (", digits 0 and 1 only" if binary else ""),
        features=DIGIT_FEATURES,
        labels=tuple(str(d) for d in range(2 if binary else 10)),
        train=train,
        validation=validation,
        test=test,
        extra_metrics={},
    )


@dataclass(frozen=True)
class Table:
    """A CSV file read and checked: numeric features, and labels as class indices."""
    path: Path
    label: str  # the label column's name
    features: tuple[str, ...]  # the feature columns' names, in the model's input order
    x: np.ndarray  # float64, (rows, features): the values as written, for their ranges
    labels: tuple[str, ...]  # the classes; a row's class index is its position here
    y: np.ndarray  # int64, (rows,)


def csv_path(description: dict, base: Path | None = None) -> Path:
    """The CSV file of a data set object; a relative path is taken from `base` (the spec's folder)."""
    path = Path(description["csv"]).expanduser()
    return path if path.is_absolute() or base is None else base / path


def _check_description(description) -> None:
    if not isinstance(description, dict):
        raise CsvError("field 'dataset' must be a built-in data set name or a CSV object")
    unknown = sorted(set(description) - set(CSV_KEYS))
    if unknown:
        raise CsvError(f"field 'dataset' has unknown key {unknown[0]!r}; known: {', '.join(CSV_KEYS)}")
    if not isinstance(description.get("csv"), str) or not description["csv"].strip():
        raise CsvError("field 'dataset.csv' must be the path of a CSV file")
    if not isinstance(description.get("label"), str) or not description["label"].strip():
        raise CsvError("field 'dataset.label' must name the label column")
    features = description.get("features")
    if features is not None:
        if not isinstance(features, list) or not features or not all(
            isinstance(name, str) and name.strip() for name in features
        ):
            raise CsvError("field 'dataset.features' must be a non-empty list of column names")
        if len(set(features)) != len(features):
            twice = next(name for name in features if features.count(name) > 1)
            raise CsvError(f"field 'dataset.features' names {twice!r} twice")
        if description["label"] in features:
            raise CsvError(f"field 'dataset.features' holds the label column {description['label']!r}")
    units = description.get("units")
    if units is not None and (
        not isinstance(units, dict) or not all(isinstance(u, str) for u in units.values())
    ):
        raise CsvError("field 'dataset.units' must map column names to unit strings")


def _number(cell: str, where: str) -> float:
    text = cell.strip()
    if not text:
        raise CsvError(f"{where}: blank cell")
    try:
        value = float(text)
    except ValueError:
        raise CsvError(f"{where}: {text[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise CsvError(f"{where}: {text!r} is not a finite number")
    if abs(value) > FLOAT32_MAX:
        raise CsvError(f"{where}: {text!r} is beyond the float32 range")
    return value


def _class_order(values: set[str]) -> list[str]:
    """Numbers in numeric order (2 before 10) when every label is one, else text order."""
    try:
        numbers = {text: float(text) for text in values}
    except ValueError:
        return sorted(values)
    if not all(math.isfinite(number) for number in numbers.values()):
        return sorted(values)
    return sorted(values, key=lambda text: (numbers[text], text))


def read_table(description: dict, base: Path | None = None) -> Table:
    """Read and check the CSV file of a data set object (see `load_csv`); raises CsvError."""
    _check_description(description)
    path = csv_path(description, base)
    shown = f"dataset {description['csv']}"
    label = description["label"]
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            try:
                first = next(reader, None)
                if first is None:
                    raise CsvError(f"{shown} is empty; its first line must name the columns")
                header = [name.strip() for name in first]
                if not any(header):
                    raise CsvError(f"{shown} line 1 is blank; it must name the columns")
                if len(header) == 1 and any(mark in header[0] for mark in ";\t|"):
                    raise CsvError(f"{shown}: the header is one column, {header[0][:60]!r}; "
                                   "columns must be separated by commas")
                for number, name in enumerate(header, start=1):
                    if not name:
                        raise CsvError(f"{shown}: column {number} of the header has no name")
                    if header.count(name) > 1:
                        raise CsvError(f"{shown}: the header names column {name!r} twice")
                features = description.get("features") or [name for name in header if name != label]
                for name in [label, *features]:
                    if name not in header:
                        raise CsvError(f"{shown} has no column {name!r} (columns: {', '.join(header)})")
                if not features:
                    raise CsvError(f"{shown} has no column besides the label {label!r}")
                stray = sorted(set(description.get("units") or {}) - set(features))
                if stray:
                    raise CsvError(f"field 'dataset.units' names {stray[0]!r}, which is not a feature")
                columns = [header.index(name) for name in features]
                label_column = header.index(label)
                rows, texts = [], []
                for row in reader:
                    if not row:
                        continue  # an empty line, such as a trailing one
                    line = f"{shown} line {reader.line_num}"
                    if len(row) != len(header):
                        raise CsvError(f"{line} has {len(row)} cells; the header has {len(header)}")
                    rows.append([_number(row[i], f"{line}, column {header[i]!r}") for i in columns])
                    text = row[label_column].strip()
                    if not text:
                        raise CsvError(f"{line}, column {label!r}: blank cell")
                    texts.append(text)
            except csv.Error as error:
                raise CsvError(f"{shown} line {reader.line_num}: {error}") from None
    except FileNotFoundError:
        raise CsvError(f"{shown}: no such file ({path})") from None
    except IsADirectoryError:
        raise CsvError(f"{shown} is a folder, not a CSV file") from None
    except UnicodeDecodeError:
        raise CsvError(f"{shown} is not UTF-8 text") from None
    except OSError as error:
        raise CsvError(f"{shown}: cannot read it ({error.strerror or error})") from None
    if not rows:
        raise CsvError(f"{shown} has a header but no data rows")
    labels = _class_order(set(texts))
    if len(labels) < 2:
        raise CsvError(f"{shown}: column {label!r} holds one class only ({labels[0]!r}); "
                       "a classifier needs two or more")
    index = {text: number for number, text in enumerate(labels)}
    y = np.array([index[text] for text in texts], dtype=np.int64)
    counts = np.bincount(y, minlength=len(labels))
    smallest = int(np.argmin(counts))
    if counts[smallest] < CSV_MIN_CLASS_ROWS:
        raise CsvError(
            f"{shown}: class {labels[smallest]!r} of column {label!r} has {counts[smallest]} "
            f"row{'s' if counts[smallest] != 1 else ''} ({len(labels)} classes in all); every class "
            f"needs at least {CSV_MIN_CLASS_ROWS} for a stratified train / validation / test split"
        )
    return Table(path, label, tuple(features), np.array(rows, dtype=np.float64), tuple(labels), y)


def load_csv(description: dict, seed: int = 0, base: Path | None = None) -> Dataset:
    """A data set from a CSV file with a header row, described as in a spec:

        {"csv": "churn.csv", "label": "churned",
         "features": ["age", "visits"],   # optional; default: every column but the label
         "units": {"age": "years"}}       # optional

    Features must be numbers; labels may be text or numbers, and the classes are their distinct
    values in order. The split is the built-in data's (stratified, seeded), and each feature's
    range in the card is the one observed over the whole file.
    """
    table = read_table(description, base)
    train, validation, test = _split(table.x.astype(np.float32), table.y, seed)
    units = description.get("units") or {}
    features = tuple(
        {"name": name, "unit": units.get(name),
         "min": float(table.x[:, i].min()), "max": float(table.x[:, i].max())}
        for i, name in enumerate(table.features)
    )
    return Dataset(
        name=table.path.name,
        description=f"CSV table {table.path.name}: {len(table.y)} rows, "
                    f"{len(table.labels)} classes in column {table.label!r}",
        features=features,
        labels=table.labels,
        train=train,
        validation=validation,
        test=test,
        extra_metrics={},
    )


def load(name: str | dict, seed: int = 0) -> Dataset:
    """A built-in data set by name, or a CSV data set object (a relative path is taken from the
    working folder; specs.load makes it absolute)."""
    if isinstance(name, dict):
        return load_csv(name, seed)
    if name == "demand":
        return load_demand(seed)
    if name in ("digits", "digits-binary"):
        return load_digits_dataset(seed, binary=name == "digits-binary")
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
