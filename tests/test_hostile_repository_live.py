"""A hostile model repository under load: `python -m service` (nginx, 2 workers, 2 gRPC processes,
polling every second) while a test writes into its repository, one after another, cards that
break the schema or are not JSON at all, files that are FIFOs or symbolic links, folders whose
names are no version or model, and bad version policies. Each is listed with a one-line reason
within two polls, logged once per process, never served; the good models keep answering REST
(through nginx) and gRPC, checked against the NumPy forward propagation; a good version written
afterwards is served; a killed worker and gRPC process are replaced by processes that load the
same repository.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import random
import shutil
import signal
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from bench import harness
from service import forward
from tests.conftest import MODELS, PARITY, front_door
from tests.test_polling import (
    INTERVAL,
    GrpcLoad,
    converge,
    health,
    repository_index,
    write_policy,
    write_version,
)
from tests.test_reliability import ClientThreads, Load, copy_repository, wait_for

PIXELS = (np.arange(64, dtype=np.float32) % 17).reshape(1, 64)
DIGITS = forward.Network.load(MODELS / "digits" / "1").predict(PIXELS)[0]
NESTED = "[" * 5000 + "]" * 5000
PROCESSES = 4  # 2 gunicorn workers and 2 gRPC processes, each with its own registry


# --- the hostile writes: each returns where its refusal is reported, and how its log line starts --

def broken_version(damage):
    """A copy of digits version 1 as a new version, damaged, renamed into place."""
    def write(repository: Path, version: int) -> tuple[tuple[str, str], str]:
        write_version(repository, "digits", version, damage=damage)
        return ("digits", str(version)), f"model digits version {version} not loaded: "
    return write


def card(edit):
    def damage(folder: Path) -> None:
        document = json.loads((folder / "card.json").read_text())
        edit(document)
        (folder / "card.json").write_text(json.dumps(document))
    return damage


def card_bytes(data: bytes):
    return lambda folder: (folder / "card.json").write_bytes(data)


def replaced(name: str, make):
    def damage(folder: Path) -> None:
        (folder / name).unlink()
        make(folder / name)
    return damage


def version_folder(name: str):
    """A good copy of digits version 1 under a name that is no version."""
    def write(repository: Path, _version: int) -> tuple[tuple[str, str], str]:
        staging = repository / "digits" / ".staging"
        shutil.copytree(MODELS / "digits" / "1", staging)
        staging.rename(repository / "digits" / name)
        return ("digits", name), f"model digits folder {name!r} of the model repository is not served: "
    return write


def model_folder(name: str):
    """A good copy of the digits model under a name that is no model name."""
    def write(repository: Path, _version: int) -> tuple[tuple[str, str], str]:
        staging = repository / ".staging"
        shutil.copytree(MODELS / "digits", staging)
        staging.rename(repository / name)
        return (name, ""), f"folder {name!r} of the model repository is not served: "
    return write


def policy_fifo(repository: Path, _version: int) -> tuple[tuple[str, None], str]:
    staging = repository / "demand" / ".version_policy.json"
    os.mkfifo(staging)
    staging.rename(repository / "demand" / "version_policy.json")
    return ("demand", None), "model demand: "


def policy_nested(repository: Path, _version: int) -> tuple[tuple[str, None], str]:
    write_policy(repository, "demand", NESTED)
    return ("demand", None), "model demand: "


HOSTILE = [  # what is written, and a word its reason must hold
    ("labels a number", broken_version(card(lambda c: c["outputs"][0].update(labels=5))), "labels"),
    ("features not a list", broken_version(card(lambda c: c["inputs"][0].update(features={"a": 1}))),
     "features"),
    ("card nested 5000 deep", broken_version(card_bytes(NESTED.encode())), "not valid JSON"),
    ("card of 2 MB", broken_version(card_bytes(b"[" + b"0," * (1 << 20) + b"0]")), "larger than the limit"),
    ("card of random bytes", broken_version(card_bytes(random.Random(0).randbytes(4096))), "not valid JSON"),
    ("card not UTF-8", broken_version(card_bytes('{"name": "digits\xe9"}'.encode("latin-1"))), "UTF-8"),
    ("card a link to /dev/zero", broken_version(replaced("card.json", lambda p: p.symlink_to("/dev/zero"))),
     "symbolic link"),
    ("card a FIFO", broken_version(replaced("card.json", os.mkfifo)), "FIFO"),
    # The link leads to the committed graph, which matches the card's sha256: refused all the same.
    ("model.onnx a link out of the folder", broken_version(replaced(
        "model.onnx", lambda p: p.symlink_to(MODELS / "digits" / "1" / "model.onnx"))), "symbolic link"),
    *[(f"version folder {name!r}", version_folder(name), "not a version")
      for name in ("01", "1e3", "-1", " 4", "9223372036854775808")],
    *[(f"model folder {name!r}", model_folder(name), "not a model name")
      for name in ("bad name!", "lost+found")],
    ("version_policy.json a FIFO", policy_fifo, "FIFO"),
    ("version_policy.json nested 5000 deep", policy_nested, "not valid JSON"),
]


def reason(url: str, where: tuple[str, str | None]) -> str:
    """What one request reports about a folder not served (an UNAVAILABLE row of the index), or
    about a model's version_policy.json (version None: reported in the ready answer, since the
    index lists folders); "" when nothing."""
    name, version = where
    if version is None:
        return next((why for refused in health(url)[1].get("refused_versions", [])
                     for model, _, why in [refused.partition(": ")]
                     if model == name and why.startswith("version_policy.json")), "")
    return next((row["reason"] for row in repository_index(url)
                 if (row["name"], row["version"]) == where and row["state"] == "UNAVAILABLE"), "")


def seconds_until(condition, limit: float = 5 * INTERVAL) -> float:
    """Seconds until condition() holds (infinite after `limit`)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > limit:
            return float("inf")
        time.sleep(0.05)
    return time.monotonic() - started


# --- clients -------------------------------------------------------------------------------------

def rest_digits(url: str) -> str:
    """A default-version digits request through nginx on a fresh connection (either worker),
    checked against the NumPy network; the version that answered."""
    connection = http.client.HTTPConnection(urlparse(url).netloc, timeout=10)
    try:
        connection.request("POST", "/v2/models/digits/infer", json.dumps({"inputs": [
            {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": PIXELS.ravel().tolist()}]}),
            {"Content-Type": "application/json"})
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    if response.status != 200:
        raise AssertionError(f"status {response.status}: {body}")
    if np.max(np.abs(np.array(body["outputs"][0]["data"]) - DIGITS)) > PARITY:
        raise AssertionError(f"wrong answer {body}")
    return body["model_version"]


def grpc_digits(address: str, client=None) -> str:
    """The same over gRPC, on `client`'s channel or on a fresh one (either gRPC process)."""
    import tritonclient.grpc as triton

    own = client is None
    if own:
        client = triton.InferenceServerClient(address, channel_args=[("grpc.use_local_subchannel_pool", 1)])
    try:
        pixels = triton.InferInput("pixels", [1, 64], "FP32")
        pixels.set_data_from_numpy(PIXELS)
        result = client.infer("digits", [pixels], client_timeout=10)
    finally:
        if own:
            client.close()
    if np.max(np.abs(result.as_numpy("probabilities")[0] - DIGITS)) > PARITY:
        raise AssertionError(f"wrong answer {result.as_numpy('probabilities')}")
    return result.get_response().model_version


class DigitsLoad(ClientThreads):
    """A REST thread and a gRPC thread sending default-version digits requests (the model the
    hostile versions are written to) until stopped; every answer checked, and the version that
    answered must be one of `self.good`."""

    def __init__(self, server):
        super().__init__(2)
        self.server, self.good = server, {"1"}
        self.ok = {"rest": 0, "grpc": 0}
        self.failures: list[str] = []
        self.protocols = iter(self.ok)

    def run(self) -> None:
        import tritonclient.grpc as triton

        protocol = next(self.protocols)
        client = triton.InferenceServerClient(self.server.grpc,
                                              channel_args=[("grpc.use_local_subchannel_pool", 1)])
        while not self.stopping.is_set():
            try:
                version = (rest_digits(self.server.url) if protocol == "rest"
                           else grpc_digits(self.server.grpc, client))
                if version not in self.good:
                    raise AssertionError(f"answered by version {version}")
                self.ok[protocol] += 1
            except Exception as error:  # a failed call, a wrong number or a wrong version
                self.failures.append(f"{protocol} {type(error).__name__}: {error}")
        client.close()


class Liveness(ClientThreads):
    """/v2/health/live through nginx every 0.1 s: the slowest answer, and every failure."""

    def __init__(self, url: str):
        super().__init__(1)
        self.url, self.slowest, self.answers, self.failures = url, 0.0, 0, []

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            started = time.monotonic()
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/live", timeout=10) as response:
                    response.read()
                self.answers += 1
            except OSError as error:
                self.failures.append(f"{type(error).__name__}: {error}")
            self.slowest = max(self.slowest, time.monotonic() - started)


def gunicorn_processes(server) -> tuple[int, list[int]]:
    """gunicorn's master (a child of the launcher) and its workers, found in /proc by bench/harness.py."""
    below = harness.Server(server.url, [server.process], Path(os.devnull))
    [master] = [pid for pid, (parent, command) in below.descendants().items()
                if parent == server.process.pid and "gunicorn" in command]
    return master, below.gunicorn_workers()


def reported_everywhere(url: str, where: tuple[str, str | None], word: str) -> bool:
    return all(word in reason(url, where) for _ in range(8))  # fresh requests reach either worker


# --- the test ------------------------------------------------------------------------------------

def test_a_hostile_repository_is_refused_and_reported_while_the_good_models_serve(tmp_path):
    repository = copy_repository(tmp_path)
    # A staging folder left behind by an interrupted copy: hidden, so neither listed nor logged.
    shutil.copytree(MODELS / "digits" / "1", repository / "digits" / ".staging-interrupted")
    with front_door(repository, workers=2, SERVING_POLL_INTERVAL=str(INTERVAL)) as server:
        wait_for(lambda: len(server.grpc_processes()) == 2)
        with Load(server.url, threads=2) as rest_load, GrpcLoad(server.grpc, threads=1) as grpc_load, \
                DigitsLoad(server) as digits_load, Liveness(server.url) as live:
            # 1 and 2: each hostile write reported by the workers within two polls, with its reason.
            reported = {}
            for version, (what, write, word) in enumerate(HOSTILE, start=2):
                where, subject = write(repository, version)
                seconds = seconds_until(functools.partial(reported_everywhere, server.url, where, word))
                why = reason(server.url, where)
                reported[what] = (where, word, seconds, why, subject + why)
            # 3: a good version after them, served by both protocols.
            good = str(len(HOSTILE) + 2)
            digits_load.good.add(good)
            write_version(repository, "digits", int(good))
            served = converge([lambda: rest_digits(server.url), lambda: grpc_digits(server.grpc)], good)
            with urllib.request.urlopen(f"{server.url}/v2/models/digits", timeout=10) as response:
                metadata = json.load(response)
        index = repository_index(server.url)

        # 5: each refusal logged once by each process, and nothing logged again at later polls.
        errors = server.log_text().count(" ERROR ")
        time.sleep(3 * INTERVAL)
        polled = server.log_text()
        counts = {what: polled.count(line) for what, (*_, line) in reported.items()}

        # 4: a worker and a gRPC process killed: their replacements load the hostile repository.
        master, [victim, survivor] = gunicorn_processes(server)
        grpc_before = set(server.grpc_processes())
        grpc_victim = min(grpc_before)
        os.kill(victim, signal.SIGKILL)
        os.kill(grpc_victim, signal.SIGKILL)
        wait_for(lambda: len(set(gunicorn_processes(server)[1]) - {victim}) == 2)
        [replacement] = set(gunicorn_processes(server)[1]) - {survivor}
        wait_for(lambda: len(server.grpc_processes()) == 2 and grpc_victim not in server.grpc_processes())
        new_grpc = set(server.grpc_processes()) - grpc_before
        wait_for(lambda: server.log_text().count("gRPC serving on") == 3)
        # gunicorn's TTOU stops its oldest worker: from then on the replacement alone answers REST.
        os.kill(master, signal.SIGTTOU)
        wait_for(lambda: gunicorn_processes(server)[1] == [replacement])
        after_kill = converge([lambda: rest_digits(server.url), lambda: grpc_digits(server.grpc)], good)
        time.sleep(2 * INTERVAL)  # the replacements poll the unchanged repository
        relogged = server.log_text()
        launcher_running = server.process.poll() is None

    print(f"\nhostile repository: {len(HOSTILE)} writes reported after "
          + ", ".join(f"{seconds:.2f}" for _, _, seconds, _, _ in reported.values())
          + f" s; the good version served after {served:.2f} s; {rest_load.ok} + {digits_load.ok['rest']} "
          f"REST and {grpc_load.ok} + {digits_load.ok['grpc']} gRPC answers; live answered within "
          f"{live.slowest:.3f} s")
    assert rest_load.failures == [] and grpc_load.failures == [] and digits_load.failures == []
    assert rest_load.ok > 100 and grpc_load.ok > 100 and min(digits_load.ok.values()) > 100
    assert live.failures == [] and live.slowest < 1 and live.answers > 50
    for what, (_, word, seconds, why, _) in reported.items():
        assert word in why and "\n" not in why and len(why) <= 200, (what, why)
        assert seconds <= 2 * INTERVAL, (what, seconds)
    assert served <= 2 * INTERVAL and metadata["versions"] == ["1", good]
    assert not [row for row in index if row["version"].startswith(".")]
    assert all(count == PROCESSES for count in counts.values()), counts
    assert polled.count(" ERROR ") == errors

    assert launcher_running and len(new_grpc) == 1 and after_kill <= 2 * INTERVAL
    for what, (*_, line) in reported.items():
        # The FIFO policy was replaced before the kill: the replacements never read it.
        replacements = 0 if what == "version_policy.json a FIFO" else 2
        assert relogged.count(line) == PROCESSES + replacements, what
    assert "Traceback" not in relogged and ".staging" not in relogged
