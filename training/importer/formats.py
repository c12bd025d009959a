"""Which reader a model file goes to: a SavedModel folder, or a file by its suffix."""

from __future__ import annotations

import zipfile
from pathlib import Path

from training.importer.keras_file import check_h5, load_keras
from training.importer.loaded import ImportRefused, Loaded
from training.importer.onnx_file import load_onnx
from training.importer.savedmodel import load_savedmodel


def load(path: Path) -> Loaded:
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ImportRefused(f"{path.name}: a folder, but not a SavedModel (no saved_model.pb)")
        return load_savedmodel(path)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise ImportRefused(f"{path.name}: not a Keras model file (a .keras file is a zip archive)")
        return load_keras(path, "keras")
    if suffix in (".h5", ".hdf5"):
        check_h5(path)
        return load_keras(path, "h5")
    if suffix == ".onnx":
        return load_onnx(path)
    raise ImportRefused(f"{path.name}: unknown model format; expected a .keras, .h5 or .onnx file "
                        "or a SavedModel folder")
