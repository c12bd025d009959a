"""The model repository, loaded: one onnxruntime session per model version per worker.

Layout: <repository>/<name>/<version>/{model.onnx, card.json, and weights.npz when the card has
a forward section}, and optionally <repository>/<name>/version_policy.json; versions are positive
integers and the highest loaded one is the default. A version that fails to load (bad card, sha256
mismatch, unreadable graph, a signature that differs from the card's, ...) is recorded with its
reason and not served; the others are unaffected. The version policy (service/version_policy.py)
decides which versions are loaded; `refresh` re-reads the repository (service/polling.py calls it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime

from service.card import CardError, ModelCard, TensorSpec
from service.errors import ModelNotFound, ModelNotReady
from service.forward import Network
from service.version_policy import ALL, VersionPolicy

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


POLICY_FILE = "version_policy.json"  # in a model's folder: which of its versions to serve


def fingerprint(folder: Path) -> tuple | None:
    """A version folder's files, cheaply: their names, sizes, modification times and inodes. A
    copy still arriving, or a file replaced, changes it. None when the folder is gone."""
    files = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    info = entry.stat()
                except FileNotFoundError:
                    continue
                files.append((entry.name, info.st_size, info.st_mtime_ns, info.st_ino))
    except FileNotFoundError:
        return None
    except OSError as error:
        return ("unreadable", str(error))
    return tuple(sorted(files))


@dataclass(frozen=True)
class Change:
    """One thing a refresh did, for the log and the metrics."""

    name: str
    version: int | None  # None: the model's version policy
    event: str  # loaded, reloaded, refused, kept, unloaded, policy, bad policy
    reason: str = ""

    @property
    def message(self) -> str:
        subject = f"model {self.name}" + ("" if self.version is None else f" version {self.version}")
        return subject + {
            "loaded": " loaded",
            "reloaded": " loaded again: its folder changed",
            "refused": f" not loaded: {self.reason}",
            "kept": f" changed but did not load, the loaded copy keeps serving: {self.reason}",
            "unloaded": f" unloaded: {self.reason}",
            "policy": f": version policy {self.reason}",
            "bad policy": f": {self.reason}",
        }[self.event]

    @property
    def level(self) -> int:
        return {"refused": logging.ERROR, "bad policy": logging.ERROR,
                "kept": logging.WARNING}.get(self.event, logging.INFO)


@dataclass(frozen=True)
class Snapshot:
    """What the registry serves. A refresh builds a new one and replaces the old in one
    assignment: a request reads one snapshot, never a half-updated one. Never mutated."""

    models: dict[str, dict[int, LoadedModel]] = field(default_factory=dict)
    failures: dict[str, dict[int, str]] = field(default_factory=dict)  # refused versions: why
    unloaded: dict[str, dict[int, str]] = field(default_factory=dict)  # left out by the policy: why
    problems: dict[str, str] = field(default_factory=dict)  # per model: a bad policy file, or none served
    repository_error: str | None = None

    @property
    def names(self) -> set[str]:
        return {*self.models, *self.failures, *self.unloaded, *self.problems}


class ModelRegistry:
    """The served versions of every model in the repository, re-read by `refresh`.

    A refresh loads only new and changed version folders (by their fingerprint), off the request
    path, then swaps the snapshot; a request keeps the LoadedModel it holds until it is done. A
    version that failed to load is tried again only when its folder changes, so a copy still
    arriving ends up served, and an unchanged broken folder is reported once, not every poll. A
    changed folder of a loaded version that does not load leaves the loaded copy serving (as
    Triton's reload does).
    """

    def __init__(self, repository: Path, threads: tuple[int, int] = (1, 1),
                 policy: VersionPolicy = ALL):
        self.repository = Path(repository)
        self.threads = threads
        self.policy = policy  # for models without a version_policy.json
        self.state = Snapshot()
        self._lock = threading.Lock()
        self._tried: dict[tuple[str, int], tuple] = {}  # fingerprint at the last load or try
        self._policies: dict[str, tuple] = {}  # name: (file's stat, policy, problem)
        self._listed = False  # once the repository was listed, failing to list it keeps the state
        self._scan_error: str | None = None

    @property
    def models(self) -> dict[str, dict[int, LoadedModel]]:
        return self.state.models

    @property
    def failures(self) -> dict[str, dict[int, str]]:
        return self.state.failures

    @property
    def unloaded(self) -> dict[str, dict[int, str]]:
        return self.state.unloaded

    @property
    def repository_error(self) -> str | None:
        return self.state.repository_error

    def load(self) -> ModelRegistry:
        self.refresh()
        return self

    def refresh(self) -> list[Change]:
        """Read the repository again and serve what it holds now; the changes, each logged."""
        with self._lock:
            changes = self._refresh()
        for change in changes:
            log.log(change.level, "%s", change.message)
        return changes

    def _refresh(self) -> list[Change]:
        old, changes = self.state, []
        try:
            listing = self._scan()
        except OSError as error:
            why = (f"model repository {self.repository} is not a folder"
                   if isinstance(error, (FileNotFoundError, NotADirectoryError))
                   else f"model repository {self.repository} cannot be read ({error.strerror or error})")
            if why != self._scan_error:
                log.error("%s%s", why, "; serving what was loaded" if self._listed else "")
            self._scan_error = why
            if not self._listed:
                self.state = Snapshot(repository_error=why)
            return changes
        self._listed, self._scan_error = True, None
        models, failures, unloaded, problems = {}, {}, {}, {}
        for name, versions in sorted(listing.items()):
            served, failed, left_out, problem = self._refresh_model(name, versions, old, changes)
            for table, value in ((models, served), (failures, failed), (unloaded, left_out),
                                 (problems, problem)):
                if value:
                    table[name] = value
        for name in sorted(set(old.models) - set(listing)):
            changes += [Change(name, version, "unloaded", "its model folder was removed")
                        for version in sorted(old.models[name])]
        # What is neither served nor refused is tried afresh when it comes back.
        self._tried = {key: seen for key, seen in self._tried.items()
                       if key[1] in models.get(key[0], {}) or key[1] in failures.get(key[0], {})}
        self._policies = {name: entry for name, entry in self._policies.items() if name in listing}
        error = None
        if not (models or failures or problems):
            error = f"model repository {self.repository} holds no models"
            if error != old.repository_error:
                log.error(error)
        self.state = Snapshot(models, failures, unloaded, problems, error)
        return changes

    def _scan(self) -> dict[str, dict[int, Path]]:
        """Each model folder's version folders: listings only."""
        listing = {}
        for model_dir in self.repository.iterdir():
            if not NAME.fullmatch(model_dir.name) or not model_dir.is_dir():
                continue
            try:
                listing[model_dir.name] = {int(path.name): path for path in model_dir.iterdir()
                                           if VERSION.fullmatch(path.name) and path.is_dir()}
            except FileNotFoundError:  # removed while listing
                continue
        return listing

    def _refresh_model(self, name: str, versions: dict[int, Path], old: Snapshot, changes: list):
        policy, problem = self._policy(name, changes)
        served, failed, left_out = {}, {}, {}
        for version in sorted(versions, reverse=True):
            if policy.admits(version, len(served)):
                self._try(name, version, versions[version], old, served, failed, changes)
            else:
                left_out[version] = f"the version policy {policy} leaves it out"
        changes += [Change(name, version, "unloaded", left_out.get(version, "its folder was removed"))
                    for version in sorted(old.models.get(name, {})) if version not in served]
        if versions and not served and not failed:
            problem = "; ".join(filter(None, [problem, f"the version policy {policy} selects none of "
                                              f"its versions ({', '.join(map(str, sorted(versions)))})"]))
        return served, failed, left_out, problem

    def _try(self, name: str, version: int, path: Path, old: Snapshot, served: dict, failed: dict,
             changes: list) -> None:
        """Serve the version loaded before if its folder is unchanged, else load it."""
        key, seen = (name, version), fingerprint(path)
        loaded = old.models.get(name, {}).get(version)
        if seen is None:  # removed since the listing
            return
        if key in self._tried and self._tried[key] == seen:
            if loaded is not None:
                served[version] = loaded
                return
            if version in old.failures.get(name, {}):
                failed[version] = old.failures[name][version]
                return
        self._tried[key] = seen
        try:
            served[version] = load_version(path, name, version, self.threads)
        except LoadError as error:
            if loaded is None:
                failed[version] = str(error)
                changes.append(Change(name, version, "refused", str(error)))
            else:
                served[version] = loaded
                changes.append(Change(name, version, "kept", str(error)))
            return
        changes.append(Change(name, version, "loaded" if loaded is None else "reloaded"))

    def _policy(self, name: str, changes: list) -> tuple[VersionPolicy, str | None]:
        """The model's version_policy.json, read again when it changes; the default without one. A
        bad file is reported and the policy in force stays (the default, at start)."""
        path = self.repository / name / POLICY_FILE
        try:
            info = path.stat()
            seen = (info.st_size, info.st_mtime_ns, info.st_ino)
        except FileNotFoundError:
            seen = None
        except OSError as error:
            seen = ("unreadable", str(error))
        cached = self._policies.get(name)
        if cached is not None and cached[0] == seen:
            return cached[1], cached[2]
        before = cached[1] if cached else self.policy
        policy, problem = self.policy, None
        if seen is not None:
            try:
                policy = VersionPolicy.parse(path.read_text())
            except OSError as error:
                policy, problem = before, f"{POLICY_FILE} cannot be read ({error.strerror or error})"
            except ValueError as error:
                policy, problem = before, f"{POLICY_FILE} {error}"
        if problem:
            changes.append(Change(name, None, "bad policy", f"{problem}; the policy stays {policy}"))
        elif policy != before or (cached is None and seen is not None):
            changes.append(Change(name, None, "policy", f"{policy}"
                                  + (f" ({POLICY_FILE})" if seen is not None else " (the default)")))
        self._policies[name] = (seen, policy, problem)
        return policy, problem

    @property
    def ready(self) -> bool:
        """The readiness rule: the repository holds at least one model, and every model in it
        has a version to serve (its highest loaded one). A broken version beside a healthy
        older one is refused and reported, but does not make the server unready: the older
        version keeps serving, as after a failed roll-out of a new version."""
        state = self.state
        return (state.repository_error is None and bool(state.models)
                and all(name in state.models for name in (*state.failures, *state.problems)))

    def unservable(self) -> list[str]:
        """What is wrong with the models that have no version to serve."""
        return self._reasons(served=False)

    def refused(self) -> list[str]:
        """Broken versions (and a bad version_policy.json) of models that still serve a version."""
        return self._reasons(served=True)

    def _reasons(self, served: bool) -> list[str]:
        state = self.state
        reasons = [f"{name}: {why}" for name, why in sorted(state.problems.items())
                   if (name in state.models) == served]
        return reasons + [f"{name} version {version}: {why}"
                          for name, versions in sorted(state.failures.items())
                          if (name in state.models) == served
                          for version, why in sorted(versions.items())]

    def names(self) -> list[str]:
        return sorted(self.state.names)

    def get(self, name: str, version: str | int | None = None) -> LoadedModel:
        """The requested version, or the highest loaded one; 404 or 503 otherwise."""
        state = self.state
        loaded, failed = state.models.get(name, {}), state.failures.get(name, {})
        if version is None:
            if loaded:
                return loaded[max(loaded)]
            reasons = [f"version {v}: {why}" for v, why in sorted(failed.items())]
            reasons += [state.problems[name]] if name in state.problems else []
            if reasons:
                raise ModelNotReady(f"model {name!r} is not ready: no version loaded "
                                    f"({'; '.join(reasons)})")
            raise ModelNotFound(name)
        number = self.version_number(name, version)
        if number in loaded:
            return loaded[number]
        if number in failed:
            raise ModelNotReady(f"model {name!r} version {number} is not ready: {failed[number]}")
        raise ModelNotFound(name, version)

    def status(self, name: str) -> dict[int, str | None]:
        """Each loaded or refused version of a model: None when loaded, else why not. 404 for a
        name the repository does not hold."""
        state = self.state
        if name not in state.names:
            raise ModelNotFound(name)
        versions = {v: None for v in state.models.get(name, {})}
        versions.update(state.failures.get(name, {}))
        return dict(sorted(versions.items()))

    def index(self) -> dict[str, dict[int, str | None]]:
        """Every model's versions: None when loaded, else why not (a version the policy leaves out:
        "unloaded: ..."), from one snapshot."""
        state = self.state
        index = {}
        for name in sorted(state.names):
            versions = {v: None for v in state.models.get(name, {})}
            versions.update(state.failures.get(name, {}))
            versions.update({v: f"unloaded: {why}" for v, why in state.unloaded.get(name, {}).items()})
            index[name] = dict(sorted(versions.items()))
        return index

    @staticmethod
    def version_number(name: str, version: str | int) -> int:
        """A version from a URL: a positive integer, or 404 (never a path, never a negative)."""
        text = str(version)
        if not VERSION.fullmatch(text):
            raise ModelNotFound(name, repr(text))
        return int(text)
