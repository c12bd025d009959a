"""One model from spec to published version: load data, fit, evaluate, export, check, write."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import keras

from training import data, export, fit
from training.data import Dataset


@dataclass
class Trained:
    spec: dict
    model: keras.Model
    dataset: Dataset
    metrics: dict
    parity: float  # max |Keras - onnxruntime| on the test split
    path: Path  # the version folder written
    seconds: float


def run(spec: dict, repository: Path, version: int | None = None,
        reports: Path | None = None, verbose: int = 2) -> Trained:
    started = time.perf_counter()
    dataset = data.load(spec["dataset"])
    model, curves = fit.fit(spec, dataset, verbose=verbose)
    metrics = fit.evaluate(spec, model, dataset)
    preprocessing = fit.preprocessing_parameters(spec, model)
    graph = export.onnx_graph(spec, model, preprocessing, dataset.train.x.shape[1])
    parity = export.check(graph, spec, model, dataset)
    path = export.write_version(
        repository, spec, dataset, graph, preprocessing, fit.dense_weights(spec, model),
        metrics, parity, version,
    )
    if reports is not None:
        from training import plots

        plots.draw(reports, spec, curves, model, dataset)
    return Trained(spec, model, dataset, metrics, parity, path, time.perf_counter() - started)
