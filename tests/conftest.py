"""Shared fixtures: the committed model repository, and models freshly trained into a temporary one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
MODEL_NAMES = ("demand", "digits", "digits-binary")
# Quality floors on the held-out test split (demand is judged against its Bayes rule instead).
ACCURACY_FLOORS = {"digits": 0.96, "digits-binary": 0.99}
DEMAND_POINTS_BELOW_BAYES = 0.02
PARITY = 1e-6


def latest_version(name: str, repository: Path = MODELS) -> Path:
    versions = [p for p in (repository / name).iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name))


def read_card(model_dir: Path) -> dict:
    return json.loads((model_dir / "card.json").read_text())


@pytest.fixture(scope="session")
def fresh(tmp_path_factory):
    """Every built-in model trained once in this test session, into a temporary repository."""
    from training import pipeline, specs

    repository = tmp_path_factory.mktemp("models")
    return {name: pipeline.run(specs.load(name), repository, verbose=0) for name in MODEL_NAMES}
