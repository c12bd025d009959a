"""training/card.py is the one card builder: trained and imported cards both come from it and parse,
it writes the committed cards' format to the byte (apart from the time and the library versions),
and a card the schema refuses is never published."""

from __future__ import annotations

import argparse
import json

import pytest

from modelcard.card import ModelCard
from tests.conftest import MODEL_NAMES, MODELS, latest_version, read_card

COMMITTED = sorted(MODELS.glob("*/*/card.json"))


@pytest.fixture()
def built(monkeypatch) -> list[dict]:
    """Every card training.card.build returns while the test runs."""
    from training import card

    cards, build = [], card.build

    def recording(**fields):
        cards.append(build(**fields))
        return cards[-1]

    monkeypatch.setattr(card, "build", recording)
    return cards


def as_written(document: dict) -> str:
    """The card's text as the repository writes it (training/repository.py)."""
    return json.dumps(document, indent=2) + "\n"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_committed_cards_parse(path):
    document = json.loads(path.read_text())
    parsed = ModelCard.parse(document)
    assert (parsed.name, parsed.version) == (path.parent.parent.name, int(path.parent.name))


def test_every_built_in_model_has_a_committed_card():
    assert {path.parent.parent.name for path in COMMITTED} >= set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_trained_card_comes_from_the_builder_as_committed(name, built, monkeypatch):
    """The committed card, rebuilt from its spec, its data and its own figures, is the same text
    but for `created` and the versions of the libraries installed here."""
    from training import card, data, export, specs

    committed_path = latest_version(name)
    committed = read_card(committed_path)
    monkeypatch.setattr(card, "libraries", lambda kind: committed["libraries"])
    document = export.trained_card(
        specs.load(name), data.load(name), committed["version"], committed["forward"]["preprocessing"],
        committed["metrics"], committed["parity"]["max_abs_difference"], committed["files"])
    assert built == [document]
    ModelCard.parse(document)
    assert as_written({**document, "created": committed["created"]}) == \
        (committed_path / "card.json").read_text()


def test_imported_card_comes_from_the_builder(built, tmp_path):
    """A real import (a scikit-learn pipeline as ONNX: no TensorFlow) writes the card the builder made."""
    from tests.imported import iris_pipeline, save_sklearn
    from training import card
    from training.importer import run

    model = save_sklearn(iris_pipeline(), tmp_path / "iris.onnx")
    args = argparse.Namespace(model=model, name="iris", repository=tmp_path / "models", version=None,
                              sample=None, labels=[], description=None, tolerance=1e-4)
    said = []
    target = run.run(args, {"probabilities": ["setosa", "versicolor", "virginica"]}, said.append)
    (document,) = built
    assert (target / "card.json").read_text() == as_written(document)
    parsed = ModelCard.parse(document)
    assert parsed.output("probabilities").labels == ("setosa", "versicolor", "virginica")
    assert document["source"] == {"kind": "onnx", "file": "iris.onnx", "format": "onnx"}
    assert list(document["libraries"]) == list(card.LIBRARIES["onnx"])  # no TensorFlow for ONNX
    assert said[-1] == f"wrote {target}"


def test_a_card_the_schema_refuses_is_a_training_error():
    from training import TrainingError, card

    with pytest.raises(TrainingError, match=r"^the card would not parse: .*datatype"):
        card.build(name="odd", version=1, description="", source={"kind": "onnx", "file": "odd.onnx"},
                   inputs=[card.tensor_entry("x", "STRING", [-1])],
                   outputs=[card.tensor_entry("y", "FP32", [-1])], forward=None,
                   parity=card.parity_entry(None, "none", 0, None, None), metrics={},
                   files={"model.onnx": {"sha256": "0" * 64}}, opset=17)
