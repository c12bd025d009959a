"""Shared fixtures: the committed model repository, and models freshly trained into a temporary one."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import typing
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelcard import forward

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
MODEL_NAMES = ("demand", "digits", "digits-binary")
# Quality floors on the held-out test split (demand is judged against its Bayes rule instead).
ACCURACY_FLOORS = {"digits": 0.96, "digits-binary": 0.99}
DEMAND_POINTS_BELOW_BAYES = 0.02
PARITY = 1e-6


def latest_version(name: str, repository: Path = MODELS) -> Path:
    versions = [p for p in (repository / name).iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name))


def read_card(model_dir: Path) -> dict:
    return json.loads((model_dir / "card.json").read_text())


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`; 0 when there are none."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@dataclass(frozen=True)
class Case:
    """A model's NumPy network, the first rows of its test split, and the network's answer."""

    network: forward.Network
    x: np.ndarray
    expected: np.ndarray

    @property
    def card(self) -> dict:
        return self.network.card

    @property
    def input_name(self) -> str:
        return self.card["inputs"][0]["name"]

    @property
    def output_name(self) -> str:
        return self.card["outputs"][0]["name"]

    @property
    def feature_names(self) -> list[str]:
        return [feature["name"] for feature in self.card["inputs"][0]["features"]]

    @property
    def class_labels(self) -> list[str]:
        return self.card["outputs"][0]["labels"]

    @property
    def binary(self) -> bool:
        """One probability per row, of the second label (docs/card.md)."""
        return self.card["outputs"][0]["shape"][-1] == 1

    def tensor(self, data, datatype: str = "FP32") -> dict:
        """A v2 input tensor of these rows."""
        return {"name": self.input_name, "shape": list(self.x.shape), "datatype": datatype, "data": data}

    def labels(self) -> tuple[list[str], np.ndarray]:
        """Each row's class label by the oracle, and the oracle's probability of that class."""
        p = self.expected
        if self.binary:
            positive = p[:, 0] >= 0.5
            return [self.class_labels[int(k)] for k in positive], np.where(positive, p[:, 0], 1 - p[:, 0])
        best = np.argmax(p, axis=1)
        return [self.class_labels[k] for k in best], p[np.arange(len(p)), best]


@pytest.fixture(scope="session")
def cases() -> dict[str, Case]:
    """Every model with the first 12 rows of its test split."""
    from training import data

    result = {}
    for name in MODEL_NAMES:
        network, x = forward.Network.load(latest_version(name)), data.load(name).test.x[:12]
        result[name] = Case(network, x, network.predict(x))
    return result


@pytest.fixture(scope="session")
def fresh(tmp_path_factory):
    """Every built-in model trained once in this test session, into a temporary repository."""
    from training import pipeline, specs

    repository = tmp_path_factory.mktemp("models")
    return {name: pipeline.run(specs.load(name), repository, verbose=0) for name in MODEL_NAMES}


@pytest.fixture(scope="session")
def app():
    from service import create_app

    return create_app({"model_repository": MODELS})


@pytest.fixture()
def client(app):
    return app.test_client()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/live", timeout=1):
                return
        except urllib.error.HTTPError as error:
            if error.code == 401:  # health behind an API key (SERVING_PUBLIC_HEALTH=false): it answers
                return
            time.sleep(0.2)
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer on {url} within {seconds} s")


class Server(NamedTuple):
    url: str
    process: subprocess.Popen  # the gunicorn master
    log: typing.IO[bytes]  # what gunicorn and the service wrote
    grpc: str | None = None  # host:port of the gRPC processes (front_door only)

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def workers(self) -> list[int]:
        found = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return sorted(int(pid) for pid in found.stdout.split())

    def descendants(self) -> list[int]:
        """Every process below the one started (the front door's nginx and gunicorn, their workers)."""
        found, parents = [], [self.process.pid]
        while parents:
            children = subprocess.run(["pgrep", "-P", ",".join(map(str, parents))],
                                      capture_output=True, text=True).stdout.split()
            parents = [int(pid) for pid in children]
            found += parents
        return sorted(found)

    def grpc_processes(self) -> list[int]:
        """The gRPC server processes (python -m service.grpc.server) below the one started."""
        found = []
        for pid in self.descendants():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"service.grpc.server" in command:
                found.append(pid)
        return found


@contextlib.contextmanager
def gunicorn(repository: Path = MODELS, workers: int = 2, **environment):
    """A real gunicorn, with the project's config, on a free loopback port; yields a Server."""
    config = ROOT / "service" / "process" / "gunicorn.conf.py"
    command = [sys.executable, "-m", "gunicorn", "--config", str(config)]
    with _serving(command, repository, workers, environment) as running:
        yield running


@contextlib.contextmanager
def front_door(repository: Path = MODELS, workers: int = 2, **environment):
    """The service as `make serve` runs it (`python -m service`: nginx in front of gunicorn, and
    the gRPC processes on a port of their own, Server.grpc)."""
    grpc_address = f"127.0.0.1:{free_port()}"
    environment = {"SERVING_GRPC_BIND": grpc_address, **environment}
    with _serving([sys.executable, "-m", "service"], repository, workers, environment) as running:
        wait_for_port(environment["SERVING_GRPC_BIND"], running.process)
        # Every gRPC process serving (each logs this line once its server has started).
        deadline = time.monotonic() + 60
        while running.log_text().count("gRPC serving on") < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        yield running._replace(grpc=environment["SERVING_GRPC_BIND"])


def wait_for_port(address: str, process: subprocess.Popen, seconds: float = 60) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {address} after {seconds} s")


@contextlib.contextmanager
def _serving(command: list[str], repository: Path, workers: int, environment: dict):
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"SERVING_MODEL_REPOSITORY": str(repository), "SERVING_WORKERS": str(workers),
                "SERVING_BIND": f"127.0.0.1:{port}", **environment})
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(url, process)
            yield Server(url, process, log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="session")
def server():
    """The URL of a service to test over HTTP: SERVING_TEST_URL when set (a container), else a
    gunicorn started here."""
    if os.environ.get("SERVING_TEST_URL"):
        yield os.environ["SERVING_TEST_URL"].rstrip("/")
        return
    with gunicorn() as running:
        yield running.url


@pytest.fixture(scope="session")
def imported(tmp_path_factory):
    """Keras models of several kinds (tests/imported.py) imported with `python -m training import`
    into a temporary repository: {name: Imported(path, inputs, outputs, model)}, where `outputs` are
    Keras' own answers on `inputs`."""
    from tests.imported import import_all

    return import_all(tmp_path_factory.mktemp("imported") / "models")
