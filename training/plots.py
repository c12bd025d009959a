"""Pictures of training: loss and accuracy per epoch, and a confusion matrix for classifiers."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.data import Dataset  # noqa: E402
from training.fit import predict_classes  # noqa: E402


def curves_figure(name: str, curves: dict) -> plt.Figure:
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = np.arange(1, len(curves["loss"]) + 1)
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        axis.plot(epochs, curves[metric], label="train")
        axis.plot(epochs, curves[f"val_{metric}"], label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"{name}: training curves")
    figure.tight_layout()
    return figure


def confusion_figure(name: str, labels, truth: np.ndarray, predicted: np.ndarray) -> plt.Figure:
    count = len(labels)
    matrix = np.zeros((count, count), dtype=int)
    np.add.at(matrix, (truth, predicted), 1)
    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.imshow(matrix, cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        if value:
            colour = "white" if value > matrix.max() / 2 else "black"
            axis.text(col, row, str(value), ha="center", va="center", color=colour, fontsize=8)
    axis.set_xticks(range(count), labels)
    axis.set_yticks(range(count), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    accuracy = np.trace(matrix) / matrix.sum()
    axis.set_title(f"{name}: test split confusion matrix (accuracy {accuracy:.3f})")
    figure.tight_layout()
    return figure


def draw(folder: Path, spec: dict, curves: dict, model, dataset: Dataset) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    predicted = predict_classes(spec, model.predict(dataset.test.x, verbose=0))
    figures = {
        f"{spec['name']}-training.png": curves_figure(spec["name"], curves),
        f"{spec['name']}-confusion.png": confusion_figure(
            spec["name"], dataset.labels, dataset.test.y, predicted
        ),
    }
    written = []
    for filename, figure in figures.items():
        figure.savefig(folder / filename, dpi=100)
        plt.close(figure)
        written.append(folder / filename)
    return written
