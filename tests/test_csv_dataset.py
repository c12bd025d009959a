"""A spec's data set may be a CSV file of one's own: trained on with the same Dense stack, split like
the built-in data, its observed feature ranges and classes in the card, and every fault in the file
refused when the spec is loaded (one line, exit code 2, the repository untouched)."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from training import data, specs

ROOT = Path(__file__).resolve().parent.parent


def write_csv(path: Path, header: list[str], rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def churn_rows(n: int = 300, seed: int = 7) -> list[list]:
    """Two well separated groups of customers; an id and a text column the model does not use."""
    rng = np.random.default_rng(seed)
    churned = rng.permutation(np.arange(n) % 2 == 0)
    age = np.where(churned, rng.normal(60, 6, n), rng.normal(34, 6, n)).round(1)
    visits = np.where(churned, rng.normal(4, 2, n), rng.normal(20, 3, n)).round().clip(0)
    plans = rng.choice(["basic", "plus"], n)
    return [[f"c{i:04d}", age[i], int(visits[i]), plans[i], "yes" if churned[i] else "no"]
            for i in range(n)]


CHURN_HEADER = ["id", "age", "visits", "plan", "churned"]


def spec_for(dataset, task="binary", units=1, preprocessing="standardize", epochs=25) -> dict:
    return {
        "name": "churn",
        "dataset": dataset,
        "task": task,
        "description": "Tells whether a customer leaves.",
        "input": "features",
        "output": "probability" if task == "binary" else "probabilities",
        "preprocessing": preprocessing,
        "layers": [
            {"name": "hidden", "units": 4, "activation": "sigmoid"},
            {"name": "output", "units": units, "activation": "sigmoid" if task == "binary" else "softmax"},
        ],
        "training": {"seed": 1, "epochs": epochs, "batch_size": 16, "learning_rate": 0.05},
    }


def write_spec(folder: Path, spec: dict) -> Path:
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def run_training(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)


def tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes() if path.is_file() else b"/")
    return digest.hexdigest()


def test_training_on_a_csv_file_writes_its_ranges_classes_and_split_into_the_card(tmp_path):
    project = tmp_path / "project"
    table = write_csv(project / "data" / "churn.csv", CHURN_HEADER, churn_rows())
    spec = spec_for({"csv": "data/churn.csv", "label": "churned", "features": ["age", "visits"],
                     "units": {"age": "years"}})
    spec_path = write_spec(project, spec)  # the CSV path is relative to this folder, not to cwd
    repository = tmp_path / "models"

    result = run_training(spec_path, "--repository", repository, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    version = repository / "churn" / "1"
    card_text = (version / "card.json").read_text()
    card = json.loads(card_text)
    assert str(tmp_path) not in card_text  # the card names the file, not where it lay

    rows = read_csv(table)
    assert card["inputs"][0]["features"] == [
        {"name": "age", "unit": "years",
         "min": min(float(r["age"]) for r in rows), "max": max(float(r["age"]) for r in rows)},
        {"name": "visits", "unit": None,
         "min": min(float(r["visits"]) for r in rows), "max": max(float(r["visits"]) for r in rows)},
    ]
    assert card["inputs"][0]["shape"] == [-1, 2]
    assert card["outputs"][0]["labels"] == ["no", "yes"]
    assert card["outputs"][0]["shape"] == [-1, 1]
    assert card["dataset"]["name"] == "churn.csv"
    assert sum(card["dataset"]["sizes"].values()) == len(rows)
    # The card names exactly the split that data.load makes again from the same file.
    assert card["dataset"] == data.load(specs.load(str(spec_path))["dataset"]).fingerprint()
    assert card["metrics"]["test_accuracy"] >= 0.95

    session = onnxruntime.InferenceSession(str(version / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    x = np.array([[float(r["age"]), float(r["visits"])] for r in rows], dtype=np.float32)
    probability = session.run(None, {"features": x})[0][:, 0]
    predicted = np.where(probability >= 0.5, "yes", "no")
    accuracy = np.mean(predicted == np.array([r["churned"] for r in rows]))
    assert accuracy >= 0.95, accuracy


def three_classes(tmp_path: Path, n_per_class=(40, 25, 35)) -> tuple[Path, list[list]]:
    """Numeric labels 1, 2 and 10 (so 2 must come before 10), every other column a feature."""
    rng = np.random.default_rng(3)
    rows = []
    for label, n, centre in zip((2, 10, 1), n_per_class, (0.0, 5.0, -5.0), strict=True):
        for _ in range(n):
            rows.append([round(float(rng.normal(centre, 1)), 3), label, round(float(rng.uniform(-2, 3)), 3)])
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    return write_csv(tmp_path / "three.csv", ["signal", "kind", "noise"], rows), rows


def test_three_classes_load_with_numeric_labels_in_numeric_order_and_every_other_column(tmp_path):
    table, rows = three_classes(tmp_path)
    spec = specs.load(str(write_spec(tmp_path, spec_for(
        {"csv": "three.csv", "label": "kind"}, task="multiclass", units=3))))
    assert spec["dataset"]["csv"] == str(table.resolve())
    dataset = data.load(spec["dataset"])
    assert dataset.labels == ("1", "2", "10")
    assert [f["name"] for f in dataset.features] == ["signal", "noise"]
    assert [f["unit"] for f in dataset.features] == [None, None]
    signal = [r[0] for r in rows]
    assert (dataset.features[0]["min"], dataset.features[0]["max"]) == (min(signal), max(signal))

    parts = (dataset.train, dataset.validation, dataset.test)
    x = np.concatenate([p.x for p in parts])
    y = np.concatenate([p.y for p in parts])
    expected = np.array([[r[0], r[2]] for r in rows], dtype=np.float32)
    expected_y = np.array([dataset.labels.index(str(r[1])) for r in rows])
    order, expected_order = np.lexsort(x.T), np.lexsort(expected.T)
    np.testing.assert_array_equal(x[order], expected[expected_order])  # every row once, none lost
    np.testing.assert_array_equal(y[order], expected_y[expected_order])  # with its own class


def test_the_split_is_stratified_and_seeded_like_the_built_in_data(tmp_path):
    table, rows = three_classes(tmp_path)
    description = {"csv": str(table), "label": "kind"}
    first, again, other = data.load(description), data.load(description), data.load(description, seed=1)
    assert first.fingerprint() == again.fingerprint()
    assert first.fingerprint()["sha256"] != other.fingerprint()["sha256"]
    assert first.fingerprint()["sizes"] == {"train": 65, "validation": 15, "test": 20}

    counts = np.bincount([first.labels.index(str(r[1])) for r in rows])
    for part in (first.train, first.validation, first.test):
        expected = counts * len(part.y) / len(rows)
        assert np.all(np.abs(np.bincount(part.y, minlength=3) - expected) <= 1), part.y

    # Exactly data._split on the file's rows, as for the built-in data sets.
    x = np.array([[r[0], r[2]] for r in rows], dtype=np.float32)
    y = np.array([first.labels.index(str(r[1])) for r in rows])
    for mine, reference in zip((first.train, first.validation, first.test), data._split(x, y, 0),
                               strict=True):
        np.testing.assert_array_equal(mine.x, reference.x)
        np.testing.assert_array_equal(mine.y, reference.y)


def good_rows(n_no=30, n_yes=30):
    return [[20 + i, i % 7, "no"] for i in range(n_no)] + [[50 + i, 10 + i % 5, "yes"] for i in range(n_yes)]


HEADER = "age,visits,churned\n"
GOOD = HEADER + "".join(f"{a},{v},{c}\n" for a, v, c in good_rows())
LINES = GOOD.splitlines(keepends=True)
DATASET = {"csv": "churn.csv", "label": "churned"}


def replace_line(number: int, text: str) -> str:
    """GOOD with its line `number` (1 = the header) replaced."""
    return "".join(LINES[: number - 1]) + text + "".join(LINES[number:])


BAD = {
    "missing file": (None, {}, "dataset churn.csv: no such file ("),
    "semicolons": (GOOD.replace(",", ";"), {}, "the header is one column, 'age;visits;churned'; "
                   "columns must be separated by commas"),
    "empty file": ("", {}, "dataset churn.csv is empty"),
    "blank first line": ("\n" + GOOD, {}, "line 1 is blank"),
    "no data rows": (HEADER, {}, "has a header but no data rows"),
    "no label column": (GOOD.replace("churned", "left", 1), {},
                        "has no column 'churned' (columns: age, visits, left)"),
    "no feature column": (GOOD, {"dataset": {**DATASET, "features": ["age", "vists"]}},
                          "has no column 'vists'"),
    "text in a number column": (replace_line(5, "37,lots,no\n"), {},
                                "line 5, column 'visits': 'lots' is not a number"),
    "blank feature cell": (replace_line(4, ",3,no\n"), {}, "line 4, column 'age': blank cell"),
    "blank label": (replace_line(3, "21,1,\n"), {}, "line 3, column 'churned': blank cell"),
    "not finite": (replace_line(6, "nan,2,no\n"), {}, "line 6, column 'age': 'nan' is not a finite number"),
    "beyond float32": (replace_line(6, "1e39,2,no\n"), {}, "'1e39' is beyond the float32 range"),
    "short row": (replace_line(7, "25,no\n"), {}, "line 7 has 2 cells; the header has 3"),
    "column named twice": (GOOD.replace("visits", "age", 1), {}, "the header names column 'age' twice"),
    "one class": (GOOD.replace("yes", "no"), {}, "column 'churned' holds one class only ('no')"),
    "class too small": (HEADER + "".join(f"{a},{v},{c}\n" for a, v, c in good_rows(30, 6)), {},
                        "class 'yes' of column 'churned' has 6 rows (2 classes in all); every class "
                        "needs at least 10"),
    "not UTF-8": (GOOD.replace("no", "n\udcf6", 1), {}, "dataset churn.csv is not UTF-8 text"),
    "three classes, binary task": (GOOD + "".join(f"{60 + i},1,maybe\n" for i in range(10)), {},
                                   "dataset churn.csv (column 'churned') has 3 classes; use task "
                                   "'multiclass'"),
    "three classes, two units": (
        GOOD + "".join(f"{60 + i},1,maybe\n" for i in range(10)),
        {"task": "multiclass", "layers": [{"name": "out", "units": 2, "activation": "softmax"}]},
        "the last layer must have 3 units for churn.csv (column 'churned')"),
    "unknown key": (GOOD, {"dataset": {**DATASET, "lable": "churned"}}, "unknown key 'lable'"),
    "label among features": (GOOD, {"dataset": {**DATASET, "features": ["age", "churned"]}},
                             "holds the label column 'churned'"),
    "rescale of negative values": (HEADER + "".join(f"{-a},{-v - 1},{c}\n" for a, v, c in good_rows()),
                                   {"preprocessing": "rescale"},
                                   "preprocessing 'rescale' divides by the largest feature value, -1 in "
                                   "churn.csv; use 'standardize'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_csv_is_one_line_and_exit_2_before_training(tmp_path, case):
    content, changes, complaint = BAD[case]
    if content is not None:
        (tmp_path / "churn.csv").write_bytes(content.encode("utf-8", "surrogateescape"))
    spec_path = write_spec(tmp_path, {**spec_for(DATASET), **changes})
    repository = tmp_path / "models"
    (repository / "churn" / "1").mkdir(parents=True)
    (repository / "churn" / "1" / "card.json").write_text("{}")
    before = tree_hash(repository)

    result = run_training(spec_path, "--repository", repository)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: spec spec.json: ")
    assert complaint in result.stderr, result.stderr
    if content is None:  # where it looked: beside the spec
        assert str(tmp_path / "churn.csv") in result.stderr
    assert tree_hash(repository) == before


def test_the_good_table_of_the_bad_cases_loads(tmp_path):
    (tmp_path / "churn.csv").write_text(GOOD)
    spec = specs.load(str(write_spec(tmp_path, spec_for(DATASET))))
    dataset = data.load(spec["dataset"])
    assert dataset.labels == ("no", "yes")
    assert [(f["name"], f["min"], f["max"]) for f in dataset.features] == [
        ("age", 20.0, 79.0), ("visits", 0.0, 14.0)]
