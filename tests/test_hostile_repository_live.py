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
import shutil
import signal
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from bench import harness
from bench import repository_soak as soak
from modelcard import forward
from tests.conftest import MODELS, PARITY, front_door
from tests.test_polling import INTERVAL, GrpcLoad, converge, repository_index, write_version
from tests.test_reliability import ClientThreads, Load, copy_repository, wait_for

PIXELS = (np.arange(64, dtype=np.float32) % 17).reshape(1, 64)
DIGITS = forward.Network.load(MODELS / "digits" / "1").predict(PIXELS)[0]
PROCESSES = 4  # 2 gunicorn workers and 2 gRPC processes, each with its own registry

# What is written (into digits, or demand's version policy), and a word its reason must hold; the
# writes are bench/repository_soak.py's.
HOSTILE = [
    *[(kind, soak.broken_version(damage), word) for kind, (damage, word) in soak.BROKEN_VERSIONS.items()],
    *[(f"version folder {name!r}", soak.version_folder(name), "not a version")
      for name in ("01", "1e3", "-1", " 4", "9223372036854775808")],
    *[(f"model folder {name!r}", soak.model_folder(name), "not a model name")
      for name in ("bad name!", "lost+found")],
    *[(kind, write, word) for kind, (write, word) in soak.POLICIES.items()],
]


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


# --- the test ------------------------------------------------------------------------------------

def test_a_hostile_repository_is_refused_and_reported_while_the_good_models_serve(tmp_path):
    repository = copy_repository(tmp_path)
    # A staging folder left behind by an interrupted copy: hidden, so neither listed nor logged.
    shutil.copytree(MODELS / "digits" / "1", repository / "digits" / ".staging-interrupted")
    with front_door(repository, workers=2, SERVING_POLL_INTERVAL=str(INTERVAL)) as server, \
            soak.RegistryLog(f"/proc/self/fd/{server.log.fileno()}") as logged:
        wait_for(lambda: len(server.grpc_processes()) == 2)
        with Load(server.url, threads=2) as rest_load, GrpcLoad(server.grpc, threads=1) as grpc_load, \
                DigitsLoad(server) as digits_load, Liveness(server.url) as live:
            # 1 and 2: each hostile write refused by both workers within two polls (their log says
            # when), and reported with its reason.
            reported = {}
            for version, (what, write, word) in enumerate(HOSTILE, start=2):
                model = "demand" if what in soak.POLICIES else "digits"
                since = logged.mark()
                where = write(repository, model, version)
                seconds = soak.seconds_until(functools.partial(
                    soak.refused_everywhere, logged, since, server.url, where, word), limit=5 * INTERVAL)
                why = soak.reason(server.url, where)
                reported[what] = (where, word, seconds, why, soak.log_subject(where) + why)
            # 3: a good version after them, loaded by every process and answering both protocols.
            good = len(HOSTILE) + 2
            digits_load.good.add(str(good))
            since = logged.mark()
            write_version(repository, "digits", good)
            served = soak.seconds_until(lambda: all(soak.served_everywhere(
                logged, since, protocol, ready, "digits", good) for protocol, ready in (
                ("rest", lambda: soak.rest_ready(server.url, "digits", good)),
                ("grpc", lambda: soak.grpc_ready(server.grpc, "digits", good)))))
            converge([lambda: rest_digits(server.url), lambda: grpc_digits(server.grpc)], str(good))
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
        after_kill = converge([lambda: rest_digits(server.url), lambda: grpc_digits(server.grpc)], str(good))
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
    assert served <= 2 * INTERVAL and metadata["versions"] == ["1", str(good)]
    assert not [row for row in index if row["version"].startswith(".")]
    assert all(count == PROCESSES for count in counts.values()), counts
    assert polled.count(" ERROR ") == errors

    assert launcher_running and len(new_grpc) == 1 and after_kill <= 2 * INTERVAL
    for what, (*_, line) in reported.items():
        # The FIFO policy was replaced before the kill: the replacements never read it.
        replacements = 0 if what == "version_policy.json a FIFO" else 2
        assert relogged.count(line) == PROCESSES + replacements, what
    assert "Traceback" not in relogged and ".staging" not in relogged
