"""The cache of optimised models (service/repository/optimised_cache.py): built once, verified on
every use, rebuilt when tampered with, never served unverified, and a cache that cannot be used
falls back to private loads with one log line. Answers are compared with onnxruntime on the
source model.onnx and, for the built-in models, with the NumPy forward propagation."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from modelcard import forward
from service.repository import optimised_cache
from service.repository.optimised_cache import MANIFEST, MODEL, WEIGHTS, ModelCache
from service.repository.registry import ModelRegistry
from service.repository.version_folder import load_version
from tests.conftest import MODELS, PARITY, ROOT
from tests.onnx_models import conv_network, run, write_version

IMAGE = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)


@pytest.fixture
def repository(tmp_path) -> Path:
    repository = tmp_path / "models"
    write_version(repository, "conv", 1, conv_network(channels=128, layers=3))
    return repository


def served(repository: Path, cache: ModelCache | None, name: str = "conv", version: int = 1):
    return load_version(repository / name / str(version), name, version, (1, 1), cache)


def features(model) -> np.ndarray:
    return model.infer({"image": IMAGE}, ["features"])["features"]


def source_answer(repository: Path) -> np.ndarray:
    return run(repository / "conv" / "1" / "model.onnx", {"image": IMAGE})["features"]


def entries(cache: Path) -> list[Path]:
    return sorted(path for path in cache.iterdir() if path.is_dir() and not path.name.startswith("."))


def test_an_entry_is_built_once_in_a_private_folder_and_answers_as_the_source(repository, tmp_path):
    folder = tmp_path / "cache"
    model = served(repository, ModelCache(folder))
    [entry] = entries(folder)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert sorted(os.listdir(entry)) == [MANIFEST, MODEL, WEIGHTS]
    manifest = json.loads((entry / MANIFEST).read_text())
    card = json.loads((repository / "conv" / "1" / "card.json").read_text())
    assert manifest["key"]["source_sha256"] == card["files"]["model.onnx"]["sha256"]
    assert manifest["key"]["onnxruntime"] and manifest["key"]["cpu"] == optimised_cache.cpu_type()
    np.testing.assert_allclose(features(model), source_answer(repository), rtol=1e-5, atol=1e-5)
    inode = (entry / WEIGHTS).stat().st_ino
    again = served(repository, ModelCache(folder))  # another process: the same entry, not rebuilt
    assert (entry / WEIGHTS).stat().st_ino == inode
    np.testing.assert_allclose(features(again), features(model), rtol=0, atol=0)
    assert any(str(entry / WEIGHTS) in line for line in Path("/proc/self/maps").read_text().splitlines())


def test_the_built_in_models_through_the_cache_agree_with_numpy(tmp_path):
    registry = ModelRegistry(MODELS, cache=ModelCache(tmp_path / "cache")).load()
    assert not registry.unservable() and not registry.refused()
    for name in ("digits", "demand"):
        network = forward.Network.load(MODELS / name / "1")
        model = registry.get(name)
        rows = np.random.default_rng(0).uniform(0, 16, (5, network.layers[0].W.shape[0])).astype(np.float32)
        [given], [wanted] = model.card.inputs, model.card.outputs
        answer = model.infer({given.name: rows}, [wanted.name])[wanted.name]
        assert np.max(np.abs(answer - network.predict(rows))) < PARITY


@pytest.mark.parametrize("tamper", ["weights", "model", "manifest names another source", "extra file"])
def test_a_tampered_entry_is_rebuilt_never_served(repository, tmp_path, tamper):
    folder = tmp_path / "cache"
    served(repository, ModelCache(folder))
    [entry] = entries(folder)
    if tamper in ("weights", "model"):
        path = entry / (WEIGHTS if tamper == "weights" else MODEL)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        fresh = path.with_suffix(".new")  # a new file renamed over: the sessions above keep theirs
        fresh.write_bytes(bytes(data))
        os.replace(fresh, path)
    elif tamper == "extra file":
        (entry / "other.bin").write_bytes(b"x")
    else:
        manifest = json.loads((entry / MANIFEST).read_text())
        manifest["key"]["source_sha256"] = "0" * 64
        (entry / MANIFEST).write_text(json.dumps(manifest))
    model = served(repository, ModelCache(folder))
    np.testing.assert_allclose(features(model), source_answer(repository), rtol=1e-5, atol=1e-5)
    [rebuilt] = entries(folder)
    assert sorted(os.listdir(rebuilt)) == [MANIFEST, MODEL, WEIGHTS]
    assert ModelCache(folder).verify(rebuilt, json.loads((rebuilt / MANIFEST).read_text())["key"]
                                     ["source_sha256"]) is not None


def test_another_cpu_or_onnxruntime_gets_another_entry(repository, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    served(repository, ModelCache(folder))
    monkeypatch.setattr(optimised_cache, "cpu_type", lambda: "other-cpu")
    served(repository, ModelCache(folder))
    monkeypatch.setattr(optimised_cache.onnxruntime, "__version__", "0.0.1")
    served(repository, ModelCache(folder))
    assert len(entries(folder)) == 3


@pytest.mark.parametrize("kind", ["a file", "under a file", "writable by others", "a symbolic link",
                                  "inside the repository"])
def test_a_cache_that_cannot_be_used_falls_back_to_private_loads_with_one_log_line(
        repository, tmp_path, caplog, kind):
    caplog.set_level(logging.WARNING, logger="service.repository.optimised_cache")
    folder = tmp_path / "cache"
    if kind == "a file":
        folder.write_text("")
    elif kind == "under a file":
        (tmp_path / "file").write_text("")
        folder = tmp_path / "file" / "cache"
    elif kind == "writable by others":
        folder.mkdir()
        folder.chmod(0o777)
    elif kind == "a symbolic link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        folder.symlink_to(tmp_path / "elsewhere")
    else:
        folder = repository / ".cache"
    cache = ModelCache(folder, repository)
    for _ in range(2):
        model = served(repository, cache)
        np.testing.assert_allclose(features(model), source_answer(repository), rtol=1e-5, atol=1e-5)
    lines = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert len(lines) == 1 and str(folder) in lines[0], lines
    assert not (tmp_path / "elsewhere").exists() or not list((tmp_path / "elsewhere").iterdir())


def test_a_broken_model_is_refused_as_without_a_cache(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="service.repository.optimised_cache")
    repository = tmp_path / "models"
    folder = write_version(repository, "conv", 1, conv_network(channels=8, layers=1))
    (folder / "model.onnx").write_bytes(b"not onnx")
    card = json.loads((folder / "card.json").read_text())
    card["files"]["model.onnx"]["sha256"] = hashlib.sha256(b"not onnx").hexdigest()
    (folder / "card.json").write_text(json.dumps(card))
    with_cache = ModelRegistry(repository, cache=ModelCache(tmp_path / "cache")).load()
    without = ModelRegistry(repository).load()
    assert with_cache.failures == without.failures and "cannot be loaded" in without.failures["conv"][1]
    assert not [r for r in caplog.records if r.name == optimised_cache.__name__]  # not the cache's fault
    assert not list((tmp_path / "cache").glob("*/"))  # nothing left of the failed build


def test_a_model_that_crashes_onnxruntime_is_refused_and_the_serving_process_lives(tmp_path, monkeypatch):
    """The optimising child dies by a signal, as onnxruntime would on a model that crashes it: the
    version is refused with the signal named, never loaded in this process, and the healthy
    version beside it serves as the source does."""
    repository = tmp_path / "models"
    write_version(repository, "conv", 1, conv_network(channels=8, layers=1))
    write_version(repository, "crash", 1, conv_network(channels=4, layers=1))
    real = optimised_cache.BUILDER
    crash_if = hashlib.sha256((repository / "crash" / "1" / "model.onnx").read_bytes()).hexdigest()
    monkeypatch.setattr(optimised_cache, "BUILDER", f"""
import hashlib, io, os, signal, sys
source = sys.stdin.buffer.read()
if hashlib.sha256(source).hexdigest() == {crash_if!r}:
    os.kill(os.getpid(), signal.SIGSEGV)
sys.stdin = io.TextIOWrapper(io.BytesIO(source))  # the real builder reads the bytes again
""" + real)
    registry = ModelRegistry(repository, cache=ModelCache(tmp_path / "cache")).load()
    assert "onnxruntime crashed optimising model.onnx (Segmentation fault)" in registry.failures["crash"][1]
    assert "crash" not in registry.models
    np.testing.assert_array_equal(features(registry.get("conv")), source_answer(repository))


def test_the_setting(tmp_path, monkeypatch):
    assert optimised_cache.from_setting("off") is None
    assert optimised_cache.from_setting(str(tmp_path)).folder == tmp_path
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert optimised_cache.from_setting("auto").folder == tmp_path / "xdg" / "onnx-serving" / "models"


def test_old_entries_and_interrupted_builds_are_removed_when_a_process_opens_the_cache(repository, tmp_path):
    folder = tmp_path / "cache"
    served(repository, ModelCache(folder))
    [kept] = entries(folder)
    old = folder / ("f" * 40)
    shutil.copytree(kept, old)
    leftover = folder / ".build-x-1"
    leftover.mkdir()
    long_ago = time.time() - (optimised_cache.OLD_DAYS + 1) * 86400
    for path in (old, leftover):
        os.utime(path, (long_ago, long_ago))
    ModelCache(folder).open()
    assert entries(folder) == [kept] and not leftover.exists()


BUILDERS = """
import sys
from pathlib import Path
from service.repository import optimised_cache
from service.repository.version_folder import load_version
built = []
original = optimised_cache.ModelCache._build
def counting(self, *args):
    built.append(1)
    return original(self, *args)
optimised_cache.ModelCache._build = counting
sys.stdin.read(1)  # all start together
load_version(Path(sys.argv[1]), "conv", 1, (1, 1), optimised_cache.ModelCache(Path(sys.argv[2])))
print(len(built))
"""


def test_processes_starting_together_build_once(tmp_path):
    repository = tmp_path / "models"
    write_version(repository, "conv", 1, conv_network(channels=256, layers=4))
    processes = [subprocess.Popen([sys.executable, "-c", BUILDERS, str(repository / "conv" / "1"),
                                   str(tmp_path / "cache")], cwd=ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(1.5)  # every interpreter has imported onnxruntime
    for process in processes:
        process.stdin.write("x")
        process.stdin.flush()
    counts = [int(process.communicate(timeout=120)[0].strip()) for process in processes]
    assert sum(counts) == 1, counts
    assert len(entries(tmp_path / "cache")) == 1
