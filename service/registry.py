"""The model repository, loaded: one onnxruntime session per model version per worker.

Layout: <repository>/<name>/<version>/{model.onnx, weights.npz, card.json}; versions are
positive integers and the highest loaded one is the default. A version that fails to load
(bad card, sha256 mismatch, unreadable graph, ...) is recorded with its reason and not served;
the others are unaffected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime

from service.errors import ModelNotFound, ModelNotReady
from service.forward import Network

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
VERSION = re.compile(r"^[1-9][0-9]{0,8}$")


class LoadError(Exception):
    """Why a model version cannot be served."""


@dataclass
class OnnxModel:
    name: str
    version: int
    card: dict
    session: onnxruntime.InferenceSession
    network: Network  # the NumPy forward propagation of the same weights, for explain
    input_name: str
    output_names: list[str]
    features: int

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """x: float32 (rows, features). Returns every output by name."""
        values = self.session.run(self.output_names, {self.input_name: x})
        return dict(zip(self.output_names, values, strict=True))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_version(path: Path, name: str, version: int, threads: tuple[int, int]) -> OnnxModel:
    try:
        card = json.loads((path / "card.json").read_text())
    except FileNotFoundError:
        raise LoadError("card.json is missing") from None
    except (OSError, ValueError) as error:
        raise LoadError(f"card.json is not valid JSON ({error})") from None
    try:
        if card["name"] != name or card["version"] != version:
            raise LoadError(f"card.json names {card['name']!r} version {card['version']}, "
                            f"but lies in {name}/{version}")
        for filename in ("model.onnx", "weights.npz"):
            if not (path / filename).is_file():
                raise LoadError(f"{filename} is missing")
            if _sha256(path / filename) != card["files"][filename]["sha256"]:
                raise LoadError(f"{filename} does not match the sha256 in card.json")
        network = Network.load(path, card)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            str(path / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if [i.name for i in inputs] != [t["name"] for t in card["inputs"]] or len(inputs) != 1:
            raise LoadError("model.onnx inputs do not match card.json")
        if [o.name for o in outputs] != [t["name"] for t in card["outputs"]]:
            raise LoadError("model.onnx outputs do not match card.json")
        features = card["inputs"][0]["shape"][1]
        if inputs[0].shape[1] != features or len(card["features"]) != features:
            raise LoadError("model.onnx input width does not match card.json")
    except LoadError:
        raise
    except (KeyError, TypeError, IndexError) as error:
        raise LoadError(f"card.json lacks or mangles a field ({error!r})") from None
    except Exception as error:  # onnxruntime and NumPy raise many kinds for a broken file
        # Clients see this reason: name the file within the repository, not on the disk.
        message = str(error).replace(str(path), f"{name}/{version}").splitlines()[0][:200]
        raise LoadError(f"{type(error).__name__}: {message}") from None
    return OnnxModel(name, version, card, session, network, inputs[0].name,
                     [o.name for o in outputs], features)


@dataclass
class ModelRegistry:
    repository: Path
    threads: tuple[int, int] = (1, 1)
    models: dict[str, dict[int, OnnxModel]] = field(default_factory=dict)
    failures: dict[str, dict[int, str]] = field(default_factory=dict)
    repository_error: str | None = None

    def load(self) -> ModelRegistry:
        if not self.repository.is_dir():
            self.repository_error = f"model repository {self.repository} is not a folder"
            log.error(self.repository_error)
            return self
        for model_dir in sorted(self.repository.iterdir()):
            if not model_dir.is_dir() or not NAME.match(model_dir.name):
                continue
            for version_dir in sorted(model_dir.iterdir()):
                if version_dir.is_dir() and VERSION.match(version_dir.name):
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

    def get(self, name: str, version: str | int | None = None) -> OnnxModel:
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
        if not VERSION.match(text):
            raise ModelNotFound(name, repr(text))
        return int(text)
