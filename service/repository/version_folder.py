"""One version folder of the model repository, read, verified and loaded.

Every file is untrusted input (service/repository/untrusted_files.py): card.json is checked against its
schema (modelcard/card.py), every file the card lists is read once and hashed, and the bytes that
matched the card's sha256 are the bytes onnxruntime and NumPy load, so that a file swapped on
disk meanwhile can never be served unverified. Whatever is wrong, LoadError says it in one line.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import orjson

from modelcard.card import CardError, ModelCard, TensorSpec, one_line
from modelcard.forward import Network
from modelcard.tables import ONNX_TYPES
from service.repository import sessions, untrusted_files
from service.repository.optimised_cache import BuilderCrashed, CacheUnusable, ModelCache
from service.repository.untrusted_files import UnsafeFile

# What a version folder's files may weigh: a card is small; model.onnx is at most protobuf's 2 GiB.
CARD_LIMIT = 1 << 20
FILE_LIMIT = 2 << 30
WEIGHTS_LIMIT = 256 << 20  # also what weights.npz may hold once decompressed


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

    def infer(self, inputs: dict[str, np.ndarray], outputs: Sequence[str],
              options: onnxruntime.RunOptions | None = None) -> dict[str, np.ndarray]:
        """Inputs already checked against the card; returns the outputs asked for, by name.
        `options`: this thread's (sessions.run_options), whose terminate flag the limits'
        watchdog sets to stop the run (service/core/limits.py)."""
        values = self.session.run(list(outputs), inputs, options or sessions.run_options())
        return dict(zip(outputs, values, strict=True))


    @staticmethod
    def run_options() -> onnxruntime.RunOptions:
        """The options of a run in this thread (sessions.run_options)."""
        return sessions.run_options()


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


def load_version(path: Path, name: str, version: int, threads: tuple[int, int],
                 cache: ModelCache | None = None) -> LoadedModel:
    """A version folder's model, from bytes read once each: what is hashed is what is loaded.
    With a cache, the session is the cache's entry for those verified bytes, optimised once and
    shared by every process (service/repository/optimised_cache.py); without one, or when the
    cache cannot serve it, a private session from the bytes themselves."""
    try:
        document = orjson.loads(untrusted_files.read(path / "card.json", CARD_LIMIT))
    except UnsafeFile as error:
        raise LoadError(str(error)) from None
    except orjson.JSONDecodeError as error:
        raise LoadError(one_line(f"card.json is not valid JSON ({error})")) from None
    try:
        card = ModelCard.parse(document)
    except CardError as error:
        raise LoadError(f"card.json: {error}") from None
    if card.name != name or card.version != version:
        raise LoadError(f"card.json names {card.name!r} version {card.version}, "
                        f"but lies in {name}/{version}")
    verified = {}
    for filename, digest in card.files.items():
        try:
            limit = WEIGHTS_LIMIT if filename == "weights.npz" else FILE_LIMIT
            data = untrusted_files.read(path / filename, limit)
        except UnsafeFile as error:
            raise LoadError(str(error)) from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise LoadError(f"{filename} does not match the sha256 in card.json")
        verified[filename] = data
    # onnxruntime, zipfile and NumPy raise many kinds of error for a broken file.
    try:
        network = forward_network(document, verified["weights.npz"]) if card.forward is not None else None
    except Exception as error:
        raise LoadError(f"weights.npz cannot be used: {type(error).__name__}: {error}") from None
    session, trouble = None, None
    if cache is not None:
        try:
            session = cache.session(verified["model.onnx"], card.files["model.onnx"], threads)
        except CacheUnusable as error:
            trouble = str(error)
        except BuilderCrashed as error:
            raise LoadError(str(error)) from None
        except Exception as error:  # onnxruntime could not optimise it, or load it optimised
            trouble = one_line(f"{type(error).__name__}: {error}")[:300]
    if session is None:
        try:
            session = onnxruntime.InferenceSession(verified["model.onnx"], sessions.session_options(threads),
                                                   providers=["CPUExecutionProvider"])
        except Exception as error:
            raise LoadError(f"model.onnx cannot be loaded: {type(error).__name__}: {error}") from None
        if trouble is not None:  # the model is fine: the cache was the trouble
            cache.report(trouble)
    if sessions.budget() and sessions.prepacked_over_budget():
        del session  # its prepacked weights leave the arena, which enforces its cap again
        raise LoadError(f"its prepacked weights do not fit, beside the other models', in the memory "
                        f"budget of every run ({sessions.SETTING}={sessions.budget() >> 20}): raise it")
    _check_signature("inputs", card.inputs, session.get_inputs())
    _check_signature("outputs", card.outputs, session.get_outputs())
    return LoadedModel(card, session, network)


def forward_network(document: dict, weights: bytes) -> Network:
    """The NumPy network of a card's forward section, checked by running it on one row."""
    with zipfile.ZipFile(io.BytesIO(weights)) as archive:  # np.load would inflate without a bound
        if sum(member.file_size for member in archive.infolist()) > WEIGHTS_LIMIT:
            raise ValueError(f"weights.npz holds more than {WEIGHTS_LIMIT} bytes once decompressed")
    network = Network.from_weights(document, io.BytesIO(weights))
    forward = document["forward"]
    [given] = [spec for spec in document["inputs"] if spec["name"] == forward["input"]]
    [wanted] = [spec for spec in document["outputs"] if spec["name"] == forward["output"]]
    width = network.layers[0].W.shape[0]
    if given["shape"][1:] != [width] or wanted["shape"][1:] != [network.layers[-1].units]:
        raise ValueError(f"the forward section's layers take {width} values and give "
                         f"{network.layers[-1].units}, but the card's {forward['input']!r} is "
                         f"{given['shape']} and {forward['output']!r} is {wanted['shape']}")
    network.predict(np.zeros((1, width)))  # a preprocessing that does not fit raises here
    return network


def fingerprint(folder: Path) -> tuple | None:
    """A version folder's files, cheaply: their names, sizes, modification times and inodes. A
    copy still arriving, or a file replaced, changes it. None when the folder is gone."""
    files = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                files.append((entry.name, info.st_size, info.st_mtime_ns, info.st_ino))
    except FileNotFoundError:
        return None
    except OSError as error:
        return ("unreadable", str(error))
    return tuple(sorted(files))
