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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

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


def load(name: str, seed: int = 0) -> Dataset:
    if name == "demand":
        return load_demand(seed)
    if name in ("digits", "digits-binary"):
        return load_digits_dataset(seed, binary=name == "digits-binary")
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
