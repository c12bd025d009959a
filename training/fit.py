"""Build a Keras model from a spec and fit it, deterministically for a given seed."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from training.data import Dataset


def seed_everything(seed: int) -> None:
    """Same seed, same machine: identical weights (shuffling, initialisers, and op order)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def preprocessing_layer(spec: dict, dataset: Dataset) -> keras.layers.Layer | None:
    kind = spec["preprocessing"]
    if kind == "standardize":
        layer = keras.layers.Normalization(name="normalize")
        layer.adapt(dataset.train.x)  # statistics of the training split only
        return layer
    if kind == "rescale":
        high = max(feature["max"] for feature in dataset.features)
        return keras.layers.Rescaling(1.0 / high, name="rescale")
    return None


def build(spec: dict, dataset: Dataset) -> keras.Model:
    inputs = keras.Input(shape=(dataset.train.x.shape[1],), name=spec["input"])
    x = inputs
    preprocess = preprocessing_layer(spec, dataset)
    if preprocess is not None:
        x = preprocess(x)
    for layer in spec["layers"]:
        x = keras.layers.Dense(layer["units"], activation=layer["activation"], name=layer["name"])(x)
    return keras.Model(inputs, x, name=spec["name"])


def fit(spec: dict, dataset: Dataset, verbose: int = 2) -> tuple[keras.Model, dict]:
    """Train and return the model and its history (loss and accuracy per epoch)."""
    settings = spec["training"]
    seed_everything(settings["seed"])
    model = build(spec, dataset)
    binary = spec["task"] == "binary"
    model.compile(
        optimizer=keras.optimizers.Adam(settings["learning_rate"]),
        loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
        metrics=["binary_accuracy" if binary else "sparse_categorical_accuracy"],
    )
    history = model.fit(
        dataset.train.x,
        dataset.train.y.astype(np.float32) if binary else dataset.train.y,
        validation_data=(
            dataset.validation.x,
            dataset.validation.y.astype(np.float32) if binary else dataset.validation.y,
        ),
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        shuffle=True,
        verbose=verbose,  # one line per epoch
    )
    rename = {"binary_accuracy": "accuracy", "sparse_categorical_accuracy": "accuracy"}
    curves = {}
    for key, values in history.history.items():
        prefix = "val_" if key.startswith("val_") else ""
        base = key.removeprefix("val_")
        curves[prefix + rename.get(base, base)] = [float(v) for v in values]
    return model, curves


def predict_classes(spec: dict, probabilities: np.ndarray) -> np.ndarray:
    if spec["task"] == "binary":
        return (probabilities[:, 0] >= 0.5).astype(np.int64)
    return np.argmax(probabilities, axis=1)


def evaluate(spec: dict, model: keras.Model, dataset: Dataset) -> dict:
    probabilities = model.predict(dataset.test.x, verbose=0)
    accuracy = float(np.mean(predict_classes(spec, probabilities) == dataset.test.y))
    return {"test_accuracy": round(accuracy, 4), **dataset.extra_metrics}


def dense_weights(spec: dict, model: keras.Model) -> dict[str, np.ndarray]:
    """W1, b1, W2, b2, ... in the lesson's layout: W is (inputs, units)."""
    weights = {}
    for number, layer in enumerate(spec["layers"], start=1):
        W, b = model.get_layer(layer["name"]).get_weights()
        weights[f"W{number}"], weights[f"b{number}"] = W.astype(np.float32), b.astype(np.float32)
    return weights


def preprocessing_parameters(spec: dict, model: keras.Model) -> dict:
    """The preprocessing layer's parameters as the card records them (float32 values)."""
    kind = spec["preprocessing"]
    if kind == "standardize":
        return normalization_parameters(model.get_layer("normalize"))
    if kind == "rescale":
        return rescaling_parameters(model.get_layer("rescale"))
    return {"type": "none"}


def normalization_parameters(layer: keras.layers.Normalization) -> dict:
    """A Normalization layer as the card's `standardize` preprocessing."""
    mean = np.asarray(layer.mean, dtype=np.float32).reshape(-1)
    # Keras divides by max(sqrt(variance), epsilon); record that divisor as std.
    std = np.maximum(
        np.sqrt(np.asarray(layer.variance, dtype=np.float32).reshape(-1)),
        np.float32(keras.backend.epsilon()),
    )
    return {"type": "standardize", "mean": mean.tolist(), "std": std.tolist()}


def rescaling_parameters(layer: keras.layers.Rescaling) -> dict:
    """A Rescaling layer with a scalar scale and offset as the card's `rescale` preprocessing."""
    def scalar(value) -> float:
        return float(np.asarray(value, dtype=np.float32).reshape(-1)[0])

    return {"type": "rescale", "scale": scalar(layer.scale), "offset": scalar(layer.offset)}
