"""Faults at start and at reload, a worker killed under load, and hot reload, with requests counted.

The load is a few client threads, each sending single-row demand requests on fresh connections
and checking every answer against the NumPy forward propagation."""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import signal
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from bench.harness import ClientThreads
from modelcard import forward
from service import create_app
from tests.conftest import MODELS, gunicorn, latest_version, metric_value

DEMAND = np.array([[19.99, 4.5, 2000.0, 7.0]], dtype=np.float32)
EXPECTED = forward.Network.load(latest_version("demand")).predict(DEMAND)[0, 0]


# --- faults at start ---------------------------------------------------------------------------

def copy_repository(tmp_path: Path) -> Path:
    repository = tmp_path / "models"
    shutil.copytree(MODELS, repository)
    return repository


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def corrupt_with_matching_sha(path: Path) -> None:
    """Garbage that the card's sha256 vouches for: onnxruntime itself must refuse it."""
    import hashlib

    garbage = b"not an ONNX graph " * 200
    path.write_bytes(garbage)
    card_path = path.parent / "card.json"
    card = json.loads(card_path.read_text())
    card["files"]["model.onnx"]["sha256"] = hashlib.sha256(garbage).hexdigest()
    card_path.write_text(json.dumps(card))


def wrong_sha(path: Path) -> None:
    card_path = path.parent / "card.json"
    card = json.loads(card_path.read_text())
    card["files"]["model.onnx"]["sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))


FAULTS = {
    "truncated model.onnx": (lambda d: truncate(d / "model.onnx"), "sha256"),
    "corrupt model.onnx": (lambda d: corrupt_with_matching_sha(d / "model.onnx"),
                           "model.onnx cannot be loaded"),
    "card sha256 mismatch": (lambda d: wrong_sha(d / "model.onnx"), "sha256"),
    "missing weights": (lambda d: (d / "weights.npz").unlink(), "weights.npz is missing"),
    "card not JSON": (lambda d: (d / "card.json").write_text("{not json"), "not valid JSON"),
    "missing card": (lambda d: (d / "card.json").unlink(), "card.json is missing"),
}


def metric(client, name: str, **labels) -> float:
    return metric_value(client.get("/metrics").get_data(as_text=True), name, **labels)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_broken_model_is_reported_and_the_others_served(tmp_path, fault, caplog):
    damage, reason = FAULTS[fault]
    repository = copy_repository(tmp_path)
    damage(repository / "digits" / "1")
    caplog.set_level(logging.ERROR, logger="service.repository.registry")
    client = create_app({"model_repository": repository}).test_client()

    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and "digits version 1" in ready.get_json()["error"]
    model_ready = client.get("/v2/models/digits/ready")
    assert model_ready.status_code == 503 and reason in model_ready.get_json()["error"]
    [status] = client.get("/v1/models/digits").get_json()["model_version_status"]
    assert status["state"] == "END" and reason in status["status"]["error_message"]
    assert any("digits version 1 not loaded" in r.getMessage() and reason in r.getMessage()
               for r in caplog.records)
    assert metric(client, "serving_model_ready", model="digits", version="1") == 0
    assert metric(client, "serving_model_load_failures_total", model="digits", version="1") >= 1
    assert metric(client, "serving_model_ready", model="demand", version="1") == 1

    answer = client.post("/v2/models/demand/infer", json={"inputs": [
        {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": DEMAND.tolist()}]})
    assert answer.status_code == 200
    assert abs(answer.get_json()["outputs"][0]["data"][0] - EXPECTED) <= 1e-6
    assert client.get("/v2/models/digits-binary/ready").status_code == 200


def test_a_broken_new_version_is_refused_and_the_previous_one_serves(tmp_path):
    repository = copy_repository(tmp_path)
    new = add_version(repository, "digits", 2)
    truncate(new / "model.onnx")
    client = create_app({"model_repository": repository}).test_client()
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200
    assert any("digits version 2" in refused for refused in ready.get_json()["refused_versions"])
    assert client.get("/v2/models/digits").get_json()["versions"] == ["1"]
    assert client.get("/v2/models/digits/ready").get_json()["version"] == "1"
    assert client.get("/v2/models/digits/versions/2/ready").status_code == 503


@pytest.mark.parametrize("layout", ["empty", "missing", "only junk"])
def test_a_repository_with_nothing_to_serve(tmp_path, layout):
    repository = tmp_path / "models"
    if layout != "missing":
        repository.mkdir()
    if layout == "only junk":
        (repository / "notes.txt").write_text("not a model")
        (repository / "demand").mkdir()
        (repository / "demand" / "latest").mkdir()  # not a version number
    client = create_app({"model_repository": repository}).test_client()
    assert client.get("/v2/health/live").status_code == 200
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and str(repository) in ready.get_json()["error"]
    assert client.get("/v2/models/demand/ready").status_code == 404


# --- load --------------------------------------------------------------------------------------

class Load(ClientThreads):
    """Client threads sending demand requests until stopped; counts answers, checks each one."""

    def __init__(self, url: str, threads: int = 4):
        super().__init__(threads)
        self.address = urlparse(url).netloc
        self.body = json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                            "data": DEMAND.tolist()}]}).encode()
        self.ok = 0
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self.last_version = None
        self.lock = threading.Lock()

    def one(self) -> str:
        connection = http.client.HTTPConnection(self.address, timeout=10)
        try:
            connection.request("POST", "/v2/models/demand/infer", self.body,
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = json.loads(response.read())
        finally:
            connection.close()
        if response.status != 200:
            raise AssertionError(f"status {response.status}: {answer}")
        if abs(answer["outputs"][0]["data"][0] - EXPECTED) > 1e-6:
            raise AssertionError(f"wrong answer {answer}")
        return answer["model_version"]

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                version = self.one()
            except Exception as error:  # a dropped connection, a wrong status or a wrong number
                with self.lock:
                    self.failures.append(f"{type(error).__name__}: {error}")
                continue
            with self.lock:
                self.ok += 1
                self.versions.add(version)
                self.last_version = version


def wait_for(condition, seconds: float = 30, step: float = 0.1) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


def test_a_killed_worker_loses_only_its_own_request(tmp_path):
    with gunicorn(copy_repository(tmp_path), workers=2) as server, Load(server.url) as load:
        wait_for(lambda: load.ok > 200)
        victim = server.workers()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(server.workers()) == 2 and victim not in server.workers())
        before = load.ok
        wait_for(lambda: load.ok > before + 200)
    print(f"\nworker SIGKILLed under load: {load.ok} answered, {len(load.failures)} failed")
    # A sync worker holds one request at a time: at most that one may fail.
    assert len(load.failures) <= 1, load.failures
    assert load.ok > 400


def add_version(repository: Path, name: str, version: int) -> Path:
    """A copy of version 1 as a new version, written beside the others and renamed into place."""
    staging = repository / name / f".staging-{version}"
    shutil.copytree(repository / name / "1", staging)
    card = json.loads((staging / "card.json").read_text())
    card["version"] = version
    (staging / "card.json").write_text(json.dumps(card))
    return staging.rename(repository / name / str(version))


def test_hot_reload_under_load_fails_no_request(tmp_path):
    repository = copy_repository(tmp_path)
    # Polling off: the signal alone reloads (tests/test_polling.py covers reloads without one).
    with gunicorn(repository, workers=2, SERVING_POLL_INTERVAL="0") as server, Load(server.url) as load:
        wait_for(lambda: load.ok > 100)
        assert load.last_version == "1"
        add_version(repository, "demand", 2)
        os.kill(server.process.pid, signal.SIGHUP)  # the documented reload
        wait_for(lambda: load.last_version == "2")
        before = load.ok
        wait_for(lambda: load.ok > before + 100)

        broken = add_version(repository, "demand", 3)
        truncate(broken / "model.onnx")
        workers = server.workers()
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for(lambda: not set(workers) & set(server.workers()) and len(server.workers()) == 2)
        before = load.ok
        wait_for(lambda: load.ok > before + 100)
        last = load.last_version
    print(f"\ntwo reloads under load: {load.ok} answered, {len(load.failures)} failed, "
          f"versions served {sorted(load.versions)}")
    assert load.failures == []
    assert load.versions == {"1", "2"} and last == "2"  # the broken version 3 was refused


def scrape(url: str, name: str, **labels) -> float:
    """A sample's value from a real server's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return metric_value(response.read().decode(), name, **labels)


def test_metrics_add_up_across_workers(tmp_path):
    """prometheus_client's multiprocess mode: /metrics counts every worker's requests."""
    labels = {"model": "demand", "version": "1", "protocol": "v2", "status": "200"}
    samples = tmp_path / "metrics"
    with gunicorn(copy_repository(tmp_path), workers=2, PROMETHEUS_MULTIPROC_DIR=str(samples)) as server:
        with Load(server.url) as load:
            wait_for(lambda: load.ok >= 300)
        counted = scrape(server.url, "serving_requests_total", **labels)
        rows = scrape(server.url, "serving_batch_size_rows_count", model="demand")
        writers = {path.stem.rsplit("_", 1)[1] for path in samples.glob("counter_*.db")}
    assert load.failures == []
    assert len(writers) == 2  # both workers answered requests and wrote their own samples
    assert counted == load.ok and rows == load.ok
