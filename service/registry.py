"""The model repository, loaded: one onnxruntime session per model version per worker.

Layout: <repository>/<name>/<version>/{model.onnx, card.json, and weights.npz when the card has
a forward section}; versions are positive integers and the highest loaded one is the default. A
version that fails to load (bad card, sha256 mismatch, unreadable graph, a signature that differs
from the card's, ...) is recorded with its reason and not served; the others are unaffected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime

from service.card import CardError, ModelCard, TensorSpec
from service.errors import ModelNotFound, ModelNotReady
from service.forward import Network

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
VERSION = re.compile(r"[1-9][0-9]{0,8}")


class LoadError(Exception):
    """Why a model version cannot be served."""


@dataclass
class LoadedModel:
    card: ModelCard
    session: onnxruntime.InferenceSession
    network: Network | None  # the NumPy forward propagation, when the card has one (explain)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> int:
        return self.card.version

    def infer(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Inputs already checked against the card; returns the outputs asked for, by name."""
        values = self.session.run(list(outputs), inputs)
        return dict(zip(outputs, values, strict=True))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# onnxruntime's names for the tensor types the card can declare.
ONNX_TYPES = {
    "BOOL": "tensor(bool)", "UINT8": "tensor(uint8)", "UINT16": "tensor(uint16)",
    "UINT32": "tensor(uint32)", "UINT64": "tensor(uint64)", "INT8": "tensor(int8)",
    "INT16": "tensor(int16)", "INT32": "tensor(int32)", "INT64": "tensor(int64)",
    "FP16": "tensor(float16)", "FP32": "tensor(float)", "FP64": "tensor(double)",
}


def _check_signature(kind: str, declared: tuple[TensorSpec, ...], graph: list) -> None:
    """The card's tensors must be the graph's, by name, datatype and rank, fixed sizes agreeing."""
    if [spec.name for spec in declared] != [node.name for node in graph]:
        raise LoadError(f"model.onnx {kind} {[node.name for node in graph]} do not match card.json")
    for spec, node in zip(declared, graph, strict=True):
        if ONNX_TYPES[spec.datatype] != node.type:
            raise LoadError(f"{kind[:-1]} {spec.name!r} is {node.type} in model.onnx, "
                            f"{spec.datatype} in card.json")
        if node.shape is not None and len(node.shape) != len(spec.shape):
            raise LoadError(f"{kind[:-1]} {spec.name!r} has rank {len(node.shape)} in model.onnx, "
                            f"{len(spec.shape)} in card.json")
        fixed = [(mine, theirs) for mine, theirs in zip(spec.shape, node.shape or (), strict=False)
                 if isinstance(theirs, int) and mine != -1]
        if any(mine != theirs for mine, theirs in fixed):
            raise LoadError(f"{kind[:-1]} {spec.name!r} has shape {node.shape} in model.onnx, "
                            f"{list(spec.shape)} in card.json")


def load_version(path: Path, name: str, version: int, threads: tuple[int, int]) -> LoadedModel:
    try:
        document = json.loads((path / "card.json").read_text())
    except FileNotFoundError:
        raise LoadError("card.json is missing") from None
    except (OSError, ValueError) as error:
        raise LoadError(f"card.json is not valid JSON ({error})") from None
    try:
        card = ModelCard.parse(document)
    except CardError as error:
        raise LoadError(f"card.json: {error}") from None
    if card.name != name or card.version != version:
        raise LoadError(f"card.json names {card.name!r} version {card.version}, "
                        f"but lies in {name}/{version}")
    try:
        for filename, digest in card.files.items():
            if "/" in filename or filename.startswith("."):
                raise LoadError(f"card.json lists a file outside the version folder: {filename!r}")
            if not (path / filename).is_file():
                raise LoadError(f"{filename} is missing")
            if _sha256(path / filename) != digest:
                raise LoadError(f"{filename} does not match the sha256 in card.json")
        network = Network.load(path, document) if card.forward is not None else None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            str(path / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        _check_signature("inputs", card.inputs, session.get_inputs())
        _check_signature("outputs", card.outputs, session.get_outputs())
    except LoadError:
        raise
    except (KeyError, TypeError, IndexError) as error:
        raise LoadError(f"card.json lacks or mangles a field ({error!r})") from None
    except Exception as error:  # onnxruntime and NumPy raise many kinds for a broken file
        # Clients see this reason: name the file within the repository, not on the disk.
        message = str(error).replace(str(path), f"{name}/{version}").splitlines()[0][:200]
        raise LoadError(f"{type(error).__name__}: {message}") from None
    return LoadedModel(card, session, network)


@dataclass
class ModelRegistry:
    repository: Path
    threads: tuple[int, int] = (1, 1)
    models: dict[str, dict[int, LoadedModel]] = field(default_factory=dict)
    failures: dict[str, dict[int, str]] = field(default_factory=dict)
    repository_error: str | None = None

    def load(self) -> ModelRegistry:
        if not self.repository.is_dir():
            self.repository_error = f"model repository {self.repository} is not a folder"
            log.error(self.repository_error)
            return self
        for model_dir in sorted(self.repository.iterdir()):
            if not model_dir.is_dir() or not NAME.fullmatch(model_dir.name):
                continue
            for version_dir in sorted(model_dir.iterdir()):
                if version_dir.is_dir() and VERSION.fullmatch(version_dir.name):
                    self._load_one(model_dir.name, int(version_dir.name), version_dir)
        if not self.models and not self.failures:
            self.repository_error = f"model repository {self.repository} holds no models"
            log.error(self.repository_error)
        return self

    def _load_one(self, name: str, version: int, path: Path) -> None:
        try:
            model = load_version(path, name, version, self.threads)
        except LoadError as error:
            self.failures.setdefault(name, {})[version] = str(error)
            log.error("model %s version %s not loaded: %s", name, version, error)
            return
        self.models.setdefault(name, {})[version] = model
        log.info("model %s version %s loaded", name, version)

    @property
    def ready(self) -> bool:
        """The readiness rule: the repository holds at least one model, and every model in it
        has a version to serve (its highest loaded one). A broken version beside a healthy
        older one is refused and reported, but does not make the server unready: the older
        version keeps serving, as after a failed roll-out of a new version."""
        return (self.repository_error is None and bool(self.models)
                and all(name in self.models for name in self.failures))

    def unservable(self) -> list[str]:
        """The failed versions of models that have no version to serve, with the reasons."""
        return [f"{name} version {version}: {why}"
                for name, versions in sorted(self.failures.items()) if name not in self.models
                for version, why in sorted(versions.items())]

    def refused(self) -> list[str]:
        """Broken versions of models that still serve an older version."""
        return [f"{name} version {version}: {why}"
                for name, versions in sorted(self.failures.items()) if name in self.models
                for version, why in sorted(versions.items())]

    def names(self) -> list[str]:
        return sorted(set(self.models) | set(self.failures))

    def get(self, name: str, version: str | int | None = None) -> LoadedModel:
        """The requested version, or the highest loaded one; 404 or 503 otherwise."""
        loaded, failed = self.models.get(name, {}), self.failures.get(name, {})
        if version is None:
            if loaded:
                return loaded[max(loaded)]
            if failed:
                reasons = "; ".join(f"version {v}: {why}" for v, why in sorted(failed.items()))
                raise ModelNotReady(f"model {name!r} is not ready: no version loaded ({reasons})")
            raise ModelNotFound(name)
        number = self.version_number(name, version)
        if number in loaded:
            return loaded[number]
        if number in failed:
            raise ModelNotReady(f"model {name!r} version {number} is not ready: {failed[number]}")
        raise ModelNotFound(name, version)

    def status(self, name: str) -> dict[int, str | None]:
        """Each version of a model: None when loaded, else why not. 404 for an unknown name."""
        if name not in self.models and name not in self.failures:
            raise ModelNotFound(name)
        versions = {v: None for v in self.models.get(name, {})}
        versions.update(self.failures.get(name, {}))
        return dict(sorted(versions.items()))

    @staticmethod
    def version_number(name: str, version: str | int) -> int:
        """A version from a URL: a positive integer, or 404 (never a path, never a negative)."""
        text = str(version)
        if not VERSION.fullmatch(text):
            raise ModelNotFound(name, repr(text))
        return int(text)
