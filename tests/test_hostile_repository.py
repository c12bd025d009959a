"""The repository is untrusted input: whatever a version folder holds harms that version only.

Each hostile case is written as version 2 of digits into a copy of the committed repository,
beside the healthy models; the registry must refresh without raising, list the version as refused
with a one-line reason, never hang (a FIFO, /dev/zero), and keep serving every other model, whose
answers are checked against the NumPy forward propagation. Folder names that are no model or
version are listed with their reason and logged once. The bytes that are hashed are the bytes
that are loaded, whatever happens to the file meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from service import create_app
from service.repository import untrusted_files
from service.repository.registry import ModelRegistry
from service.repository.untrusted_files import UnsafeFile
from tests.conftest import MODELS

VERSION = 2


def copy_repository(tmp_path: Path) -> Path:
    repository = tmp_path / "models"
    shutil.copytree(MODELS, repository)
    return repository


def new_version(repository: Path, name: str = "digits", version: int = VERSION) -> Path:
    folder = repository / name / str(version)
    shutil.copytree(MODELS / name / "1", folder)
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps({**card, "version": version}))
    return folder


def edit_card(folder: Path, change) -> None:
    card = json.loads((folder / "card.json").read_text())
    change(card)
    (folder / "card.json").write_text(json.dumps(card))


def replace(path: Path, make) -> None:
    path.unlink()
    make(path)


def unix_socket(path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.close()


def deeply_nested(depth: int) -> str:
    return '{"name": ' + "[" * depth + "]" * depth + "}"


HOSTILE = {
    "labels not a list": (lambda d: edit_card(d, lambda c: c["outputs"][0].update(labels=5)),
                          "outputs[0].labels"),
    "features not a list": (lambda d: edit_card(d, lambda c: c["inputs"][0].update(features="pixels")),
                            "inputs[0].features"),
    "a shape of strings": (lambda d: edit_card(d, lambda c: c["inputs"][0].update(shape=["-1", "64"])),
                           "inputs[0].shape"),
    "version as a float": (lambda d: edit_card(d, lambda c: c.update(version=2.0)), "version"),
    "sha256 not a string": (lambda d: edit_card(d, lambda c: c["files"]["model.onnx"].update(sha256=[1])),
                            "files['model.onnx'].sha256"),
    "an unknown activation": (lambda d: edit_card(d, lambda c: c["forward"]["layers"][0].update(
        activation="tanh")), "forward.layers[0].activation"),
    "layers that do not chain": (lambda d: edit_card(d, lambda c: c["forward"]["layers"][1].update(
        units=16)), "weights.npz cannot be used"),
    "nested thousands of levels": (lambda d: (d / "card.json").write_text(deeply_nested(5000)),
                                   "not valid JSON"),
    "huge": (lambda d: (d / "card.json").write_text(json.dumps({"description": "x" * (2 << 20)})),
             "larger than the limit"),
    "binary": (lambda d: (d / "card.json").write_bytes(np.random.default_rng(0).bytes(4096)),
               "not valid JSON"),
    "not UTF-8": (lambda d: (d / "card.json").write_bytes(
        (d / "card.json").read_bytes().replace(b'"digits"', b'"d\xe9gits"', 1)), "not valid JSON"),
    "a FIFO": (lambda d: replace(d / "card.json", os.mkfifo), "card.json is a FIFO"),
    "a link to /dev/zero": (lambda d: replace(d / "card.json", lambda p: p.symlink_to("/dev/zero")),
                            "card.json is a symbolic link"),
    "a socket": (lambda d: replace(d / "card.json", unix_socket), "card.json is a socket"),
    "a folder": (lambda d: replace(d / "card.json", Path.mkdir), "card.json is a folder"),
    "model.onnx linked out of the folder": (
        lambda d: replace(d / "model.onnx", lambda p: p.symlink_to(MODELS / "digits" / "1" / "model.onnx")),
        "model.onnx is a symbolic link"),
    "weights.npz a FIFO": (lambda d: replace(d / "weights.npz", os.mkfifo), "weights.npz is a FIFO"),
    "missing card": (lambda d: (d / "card.json").unlink(), "card.json is missing"),
}


def refresh_within(registry: ModelRegistry, seconds: float = 30):
    """registry.refresh(), failing the test instead of hanging when it blocks."""
    done: list = []
    worker = threading.Thread(target=lambda: done.append(registry.refresh()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert done, f"refresh did not return within {seconds} s"
    return done[0]


def assert_others_serve(registry: ModelRegistry, cases) -> None:
    for name, case in cases.items():
        model = registry.get(name, 1)
        [output] = model.card.output_names
        served = model.infer({case.input_name: case.x.astype(np.float32)}, [output])[output]
        np.testing.assert_allclose(served, case.expected, atol=1e-6)


def entry(registry: ModelRegistry, name: str, version: str) -> tuple[bool, str]:
    [(ready, reason)] = [(r, why) for n, v, r, why in registry.index() if (n, v) == (name, version)]
    return ready, reason


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_version_is_refused_with_its_reason_and_the_others_serve(tmp_path, case, cases):
    damage, reason = HOSTILE[case]
    repository = copy_repository(tmp_path)
    registry = ModelRegistry(repository)
    refresh_within(registry)
    damage(new_version(repository))

    changes = refresh_within(registry)
    ready, why = entry(registry, "digits", "2")
    assert not ready and reason in why and "\n" not in why and len(why) <= 200, why
    assert [(c.name, c.version, c.event) for c in changes] == [("digits", 2, "refused")]
    assert registry.ready and registry.get("digits").version == 1
    assert_others_serve(registry, cases)
    assert refresh_within(registry) == []  # reported once, not once per poll


def test_a_worker_boots_on_a_repository_full_of_hostile_versions(tmp_path, cases):
    """What used to be a crash loop: gunicorn builds the app in each worker, so the app must
    build whatever the repository holds."""
    repository = copy_repository(tmp_path)
    for version, (damage, _) in enumerate(HOSTILE.values(), start=2):
        folder = new_version(repository, version=version)
        edit_card(folder, lambda card, v=version: card.update(version=v))
        damage(folder)
    client = create_app({"model_repository": repository, "poll_interval": 0}).test_client()
    assert client.get("/v2/health/ready").status_code == 200
    index = client.post("/v2/repository/index").get_json()
    refused = [e for e in index if e["name"] == "digits" and e["version"] != "1"]
    assert len(refused) == len(HOSTILE) and all(e["state"] == "UNAVAILABLE" and e["reason"] for e in refused)
    case = cases["digits"]
    answer = client.post("/v2/models/digits/infer", json={"inputs": [case.tensor(case.x.tolist())]})
    np.testing.assert_allclose(np.reshape(answer.get_json()["outputs"][0]["data"], case.expected.shape),
                               case.expected, atol=1e-6)


MISNAMED = {
    "01": "not a version", "1e3": "not a version", "-1": "not a version", " 4": "not a version",
    "9223372036854775808": "not a version", "2\n": "not a version",
}


def test_folders_that_name_no_version_or_model_are_listed_with_the_reason_and_logged_once(tmp_path, caplog):
    repository = copy_repository(tmp_path)
    for name in MISNAMED:
        shutil.copytree(MODELS / "demand" / "1", repository / "demand" / name)
    for name in ("bad name!", "lost+found", "caf\udce9", ".staging-2"):  # caf\xe9: not UTF-8
        (repository / name / "1").mkdir(parents=True)
    outside = tmp_path / "outside"
    shutil.copytree(MODELS / "demand", outside)
    (repository / "linked").symlink_to(outside)
    (repository / "demand" / "7").symlink_to(outside / "1")
    # A link within the repository is followed; the hidden folder it leads to is a staging area.
    (repository / "demand" / "3").symlink_to(new_version(repository, "demand", version=3).rename(
        repository / "demand" / ".store"))
    caplog.set_level(logging.ERROR, logger="service.repository.registry")

    registry = ModelRegistry(repository)
    registry.refresh()
    index = {(name, version): (ready, why) for name, version, ready, why in registry.index()}
    for version in MISNAMED:
        ready, why = index["demand", ascii(version)[1:-1] if version == "2\n" else version]
        assert not ready and why.startswith("not a version"), (version, why)
    assert index["demand", "7"][1] == "a symbolic link leading out of the repository"
    for name in ("bad name!", "lost+found"):
        assert index[name, ""] == (False, index[name, ""][1]) and "not a model name" in index[name, ""][1]
    # Hidden folders are staging areas (a version is written under one, then renamed): not listed.
    assert not [key for key in index if key[0].startswith(".") or (key[1] or "").startswith(".")]
    assert "caf\\xe9" in {name for name, _ in index}
    assert index["linked", ""][1] == "a symbolic link leading out of the repository"
    assert index["demand", "3"] == (True, "") and registry.get("demand").version == 3
    assert registry.ready
    logged = [record.getMessage() for record in caplog.records]
    assert sum("not a version" in line for line in logged) == len(MISNAMED)
    caplog.clear()
    registry.refresh()
    assert not [record for record in caplog.records if "not a" in record.getMessage()]


def test_the_bytes_that_are_hashed_are_the_bytes_that_are_served(tmp_path, cases, monkeypatch):
    """model.onnx is swapped for another model right after it was read: the verified bytes are
    served, and the next refresh, which finds the swap, says the loaded copy is stale."""
    repository = copy_repository(tmp_path)
    folder = new_version(repository)
    read = untrusted_files.read

    def read_then_swap(path: Path, limit: int) -> bytes:
        data = read(path, limit)
        if path == folder / "model.onnx":
            swapped = folder / ".swap"
            shutil.copy(MODELS / "digits-binary" / "1" / "model.onnx", swapped)
            swapped.rename(path)  # a different, valid graph with the same input
        return data

    monkeypatch.setattr(untrusted_files, "read", read_then_swap)
    registry = ModelRegistry(repository)
    registry.refresh()
    monkeypatch.setattr(untrusted_files, "read", read)
    model = registry.get("digits", 2)
    served = model.infer({"pixels": cases["digits"].x.astype(np.float32)}, ["probabilities"])["probabilities"]
    np.testing.assert_allclose(served, cases["digits"].expected, atol=1e-6)

    changes = registry.refresh()
    assert [(c.version, c.event) for c in changes] == [(2, "kept")]
    ready, why = entry(registry, "digits", "2")
    assert ready and why.startswith("its files changed and were refused") and "sha256" in why
    client = create_app({"model_repository": repository, "poll_interval": 0}).test_client()
    assert "reason" not in client.get("/v2/models/digits/versions/1/ready").get_json()
    # A fresh process refuses the swapped file outright.
    assert client.get("/v2/models/digits/versions/2/ready").status_code == 503


def test_the_ready_answer_of_a_stale_version_says_so(tmp_path):
    repository = copy_repository(tmp_path)
    client = create_app({"model_repository": repository, "poll_interval": 0}).test_client()
    registry = client.application.extensions["data_plane"].registry
    (repository / "digits" / "1" / "model.onnx").write_bytes(b"truncated")
    registry.refresh()
    answer = client.get("/v2/models/digits/versions/1/ready")
    assert answer.status_code == 200 and answer.get_json()["ready"] is True
    assert "sha256" in answer.get_json()["reason"]
    [stale] = [e for e in client.post("/v2/repository/index").get_json() if e["name"] == "digits"]
    assert stale["state"] == "READY" and "refused" in stale["reason"]

    # gRPC's ModelReady has no field for it: the trailing metadata says it.
    from service.grpc.server import InferenceServicer
    from service.stubs import messages

    class Context:
        trailing = ()

        def set_trailing_metadata(self, metadata):
            self.trailing = metadata

    context = Context()
    servicer = InferenceServicer(client.application.extensions["data_plane"])
    answer = servicer.ModelReady(messages.ModelReadyRequest(name="digits", version="1"), context)
    assert answer.ready and dict(context.trailing)["reason"].startswith("its files changed")
    assert "sha256" in dict(context.trailing)["reason"]


@pytest.mark.parametrize(("content", "reason"), [
    (lambda p: os.mkfifo(p), "is a FIFO"),
    (lambda p: p.write_text("[" * 5000 + "]" * 5000), "not valid JSON"),
    (lambda p: p.write_bytes(b'{"latest": \xff}'), "not valid JSON"),
    (lambda p: p.write_text('{"latest": ' + "9" * 100 + "}"), "must be"),
    (lambda p: p.write_text('{"latest": "2"}'), "must be"),
    (lambda p: p.write_text(json.dumps({"specific": list(range(1, 20000))})), "larger than the limit"),
    (lambda p: p.symlink_to("/dev/zero"), "symbolic link"),
])
def test_a_hostile_version_policy_is_reported_and_the_policy_in_force_stays(tmp_path, content, reason):
    repository = copy_repository(tmp_path)
    new_version(repository, "demand")
    registry = ModelRegistry(repository)
    content(repository / "demand" / "version_policy.json")
    changes = refresh_within(registry)
    [bad] = [c for c in changes if c.event == "bad policy"]
    assert reason in bad.reason and "\n" not in bad.reason and len(bad.message) < 400
    assert sorted(registry.models["demand"]) == [1, 2] and registry.get("demand").version == 2
    assert refresh_within(registry) == []


def test_a_file_that_grows_while_it_is_read_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "card.json"
    path.write_bytes(b"{}")
    real_read = os.read

    def read_while_appending(descriptor, size):
        with path.open("ab") as grow:
            grow.write(b" ")
        return real_read(descriptor, size)

    monkeypatch.setattr(untrusted_files.os, "read", read_while_appending)
    with pytest.raises(UnsafeFile, match="changed while it was read"):
        untrusted_files.read(path, 1 << 20)


def test_a_file_that_cannot_be_read_is_named(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"graph")

    def failing_read(descriptor, size):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(untrusted_files.os, "read", failing_read)
    with pytest.raises(UnsafeFile, match=r"^model.onnx cannot be read \(Input/output error\)$"):
        untrusted_files.read(path, 1 << 20)
