"""make soak, second part: ten minutes of a hostile model repository, polled every second, under load.

`python -m service` (nginx, 2 gunicorn workers, 2 gRPC processes) serves a temporary copy of
models/ with SERVING_POLL_INTERVAL=1. A writer (seeded RNG) writes into it every 1-3 s either a
good version (a copy of a committed version under a new number, renamed into place) or a broken
one: a card that breaks the schema, is nested 5000 deep, weighs 2 MB, is random bytes or not
UTF-8; a card that is a FIFO or a link to /dev/zero; model.onnx a link out of the folder,
truncated, or not matching its sha256; a card naming another version; a copy whose files arrive
one by one with pauses (broken until its last file, then good); a version or model folder whose
name is no version or model; a version_policy.json that is a FIFO or nested 5000 deep. Now and
then it removes an old version (never the last good one of a model). Meanwhile client threads
stream REST v2 JSON requests through nginx and gRPC ModelInfer calls to the models' default
versions, each answer checked against the NumPy forward propagation (modelcard.forward) of the
committed version and against the versions known good.

Each write is watched from its rename. Which process answers a request cannot be chosen, but
each process logs a load or a refusal once, after it serves it: a good version is served by REST
once both workers logged it loaded and `/v2/models/<m>/versions/<v>/ready` through nginx says so,
by gRPC once both gRPC processes logged it and ModelReady says so; a broken one is reported once
both workers logged its refusal and the index lists it UNAVAILABLE with its reason (a version
policy: the ready answer's refused_versions, since the index lists folders).
Passes when no request failed, every good version was served within 2 s by both protocols,
every broken write was reported within 2 s, no server process was replaced, and once the writes
stop nothing more is logged as an error (a refusal is logged once per change, not per poll).
Prints the figures and the verdict; exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from bench.harness import ROOT, ClientThreads, free_port, front_door, memory
from modelcard import forward
from service.repository.scan import is_version, shown

MODELS = ROOT / "models"
WORKERS = 2
INTERVAL = 1  # SERVING_POLL_INTERVAL
BOUND = 2 * INTERVAL  # a change is seen within two polls
GIVE_UP = 15  # seconds a watch waits before recording "never"
STAGE = 3  # seconds each stage of a copy arriving file by file stays on disk: longer than BOUND
KEPT = 24  # folders beyond this many are removed, oldest choices at random
NESTED = b"[" * 5000 + b"]" * 5000

# An index row (model, version; "" for a model folder), or (model, None): its version_policy.json.
Where = tuple[str, str | None]


# --- hostile writes (tests/test_hostile_repository_live.py writes the same) ---------------------

def new_version(repository: Path, model: str, version: int, damage=None) -> Path:
    """The committed version 1 of `model` as `version` (its card says so), damaged, written under
    a hidden name and renamed into place."""
    staging = repository / model / f".staging-{version}"
    shutil.copytree(MODELS / model / "1", staging)
    card = json.loads((staging / "card.json").read_text())
    (staging / "card.json").write_text(json.dumps({**card, "version": version}))
    if damage is not None:
        damage(staging)
    return staging.rename(repository / model / str(version))


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


def committed_graph(path: Path) -> None:
    """A link to the committed model.onnx of the same model: outside the folder, though its
    sha256 matches the card."""
    path.symlink_to(MODELS / path.parent.parent.name / "1" / "model.onnx")


def wrong_sha256(document: dict) -> None:
    document["files"]["model.onnx"]["sha256"] = "0" * 64


def truncated(folder: Path) -> None:
    graph = folder / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:100])


# kind: (damage, a word of the reason)
BROKEN_VERSIONS = {
    "labels a number": (card(lambda c: c["outputs"][0].update(labels=5)), "labels"),
    "features not a list": (card(lambda c: c["inputs"][0].update(features={"a": 1})), "features"),
    "card nested 5000 deep": (card_bytes(NESTED), "not valid JSON"),
    "card of 2 MB": (card_bytes(b"[" + b"0," * (1 << 20) + b"0]"), "larger than the limit"),
    "card of random bytes": (card_bytes(random.Random(0).randbytes(4096)), "not valid JSON"),
    "card not UTF-8": (card_bytes('{"name": "caf\xe9"}'.encode("latin-1")), "UTF-8"),
    "card a link to /dev/zero": (replaced("card.json", lambda p: p.symlink_to("/dev/zero")), "symbolic link"),
    "card a FIFO": (replaced("card.json", os.mkfifo), "FIFO"),
    "model.onnx a link out of the folder": (replaced("model.onnx", committed_graph), "symbolic link"),
    "sha256 mismatch": (card(wrong_sha256), "sha256"),
    "truncated model.onnx": (truncated, "sha256"),
    "card naming another version": (card(lambda c: c.update(version=c["version"] + 1)), "but lies in"),
}


def broken_version(damage) -> Callable[[Path, str, int], Where]:
    def write(repository: Path, model: str, version: int) -> Where:
        new_version(repository, model, version, damage)
        return model, str(version)
    return write


def version_folder(name: str) -> Callable[[Path, str, int], Where]:
    """A good copy of the model's version 1 under a name that is no version."""
    def write(repository: Path, model: str, _version: int) -> Where:
        staging = repository / model / f".staging-{name}"
        shutil.copytree(MODELS / model / "1", staging)
        staging.rename(repository / model / name)
        return model, name
    return write


def model_folder(name: str) -> Callable[[Path, str, int], Where]:
    """A good copy of a model under a name that is no model name."""
    def write(repository: Path, model: str, _version: int) -> Where:
        staging = repository / f".staging-{name}"
        shutil.copytree(MODELS / model, staging)
        staging.rename(repository / name)
        return name, ""
    return write


def policy_fifo(repository: Path, model: str, _version: int) -> Where:
    staging = repository / model / ".version_policy.json"
    os.mkfifo(staging)
    staging.rename(repository / model / "version_policy.json")
    return model, None


def policy_nested(repository: Path, model: str, _version: int) -> Where:
    staging = repository / model / ".version_policy.json"
    staging.write_bytes(NESTED)
    staging.rename(repository / model / "version_policy.json")
    return model, None


POLICIES = {"version_policy.json a FIFO": (policy_fifo, "FIFO"),
            "version_policy.json nested 5000 deep": (policy_nested, "not valid JSON")}


# --- what the server says -----------------------------------------------------------------------

def get_json(url: str, data: bytes | None = None) -> dict | list:
    """The JSON answer, whatever its status (an unready server answers 503 with the reasons)."""
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def reason(url: str, where: Where) -> str:
    """What one request reports about a folder not served (its UNAVAILABLE row of the index), or
    about a model's version_policy.json (version None: in the ready answer's refused_versions,
    since the index lists folders); "" when nothing."""
    name, version = where
    if version is None:
        refused = get_json(f"{url}/v2/health/ready").get("refused_versions", [])
        return next((why for entry in refused for model, _, why in [entry.partition(": ")]
                     if model == name and why.startswith("version_policy.json")), "")
    return next((row["reason"] for row in get_json(f"{url}/v2/repository/index", b"{}")
                 if (row["name"], row["version"]) == where and row["state"] == "UNAVAILABLE"), "")


def log_subject(where: Where) -> str:
    """How the log line of a refusal begins, before its reason
    (service.repository.registry.Change.message)."""
    name, version = where
    if version is None:
        return f"model {name}: "
    if version == "":
        return f"folder {name!r} of the model repository is not served: "
    if not is_version(version):
        return f"model {name} folder {version!r} of the model repository is not served: "
    return f"model {name} version {version} not loaded: "


class RegistryLog:
    """The lines service.repository.registry wrote to the server's log, followed as it grows. Each process
    logs a load or a refusal once, after it serves the new state: counting the lines tells how
    many processes have taken a change in, which requests through a load balancer cannot.
    gunicorn's workers log as "service.repository.registry:", the gRPC processes as
    "service.repository.registry[grpc N]:"."""

    def __init__(self, path: Path | str):
        self.path = path
        self.lines: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.follow, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()

    def follow(self) -> None:
        with open(self.path, "rb") as log:
            partial = b""
            while not self.stopping.is_set():
                chunk = log.read(1 << 20)
                if not chunk:
                    time.sleep(0.02)
                    continue
                *lines, partial = (partial + chunk).split(b"\n")
                self.lines += [line.decode(errors="replace") for line in lines
                               if b" service.repository.registry" in line]

    def mark(self) -> int:
        return len(self.lines)

    def processes(self, since: int, subject: str, word: str = "") -> Counter:
        """Lines logged since `since` that say `subject`, then `word`: by kind of process."""
        found = Counter()
        for line in self.lines[since:]:
            head, said, tail = line.partition(subject)
            if said and word in tail:
                found["grpc" if "service.repository.registry[grpc" in head else "rest"] += 1
        return found


def refused_everywhere(log: RegistryLog, since: int, url: str, where: Where, word: str) -> bool:
    """Both workers logged the refusal since `since`, with `word` in its reason, and a request
    finds it reported (the index, or the ready answer for a version policy)."""
    return (log.processes(since, log_subject(where), word)["rest"] >= WORKERS
            and word in reason(url, where))


def served_everywhere(log: RegistryLog, since: int, protocol: str, ready: Callable[[], bool],
                      model: str, version: int) -> bool:
    """Both processes of `protocol` logged the version loaded since `since`, and it says ready."""
    return log.processes(since, f"model {model} version {version} loaded")[protocol] >= WORKERS and ready()


def rest_ready(url: str, model: str, version: int) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/models/{model}/versions/{version}/ready", timeout=10):
            return True
    except urllib.error.HTTPError:
        return False


def grpc_client(address: str):
    """A tritonclient on a channel of its own: its own connection, to either gRPC process."""
    import tritonclient.grpc as triton

    return triton.InferenceServerClient(address, channel_args=[("grpc.use_local_subchannel_pool", 1)])


def grpc_ready(address: str, model: str, version: int) -> bool:
    from tritonclient.utils import InferenceServerException

    client = grpc_client(address)
    try:
        return client.is_model_ready(model, str(version), client_timeout=10)
    except InferenceServerException:  # NOT_FOUND: not listed yet
        return False
    finally:
        client.close()


def seconds_until(condition: Callable[[], bool], limit: float = GIVE_UP) -> float:
    """Seconds from now to the start of the first check of condition() that holds; infinite
    after `limit`."""
    started = time.monotonic()
    while True:
        checked = time.monotonic()
        if condition():
            return checked - started
        if checked - started > limit:
            return float("inf")
        time.sleep(0.05)


# --- clients ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Oracle:
    """A model's committed network in NumPy, one row within its features' ranges, its answer,
    and the card's parity tolerance."""

    model: str
    input: str
    row: np.ndarray
    expected: np.ndarray
    tolerance: float

    @classmethod
    def of(cls, model: str, rng: random.Random) -> Oracle:
        network = forward.Network.load(MODELS / model / "1")
        [spec] = network.card["inputs"]
        row = np.array([[rng.uniform(f["min"], f["max"]) for f in spec["features"]]], dtype=np.float32)
        return cls(model, spec["name"], row, network.predict(row)[0], network.card["parity"]["tolerance"])

    def check(self, values, version: str, good: set[str]) -> None:
        if version not in good:
            raise AssertionError(f"{self.model} answered by version {version}, not a good one")
        if np.max(np.abs(np.asarray(values, dtype=np.float64).ravel() - self.expected)) > self.tolerance:
            raise AssertionError(f"{self.model} version {version}: {values} instead of {self.expected}")


class Clients(ClientThreads):
    """Threads sending default-version requests to every model in turn until stopped: REST v2
    JSON through nginx (a fresh connection each, so either worker) and gRPC (a channel each)."""

    def __init__(self, url: str, grpc_address: str, oracles: list[Oracle], good: dict[str, set[str]],
                 rest: int, grpc: int):
        super().__init__(rest, self.rest)
        self.threads += [threading.Thread(target=self.grpc) for _ in range(grpc)]
        self.url, self.grpc_address, self.oracles, self.good = url, grpc_address, oracles, good
        self.sent, self.failed = Counter(), Counter()
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def count(self, protocol: str, error: Exception | None) -> None:
        with self.lock:
            self.sent[protocol] += 1
            if error is not None:
                self.failed[protocol] += 1
                if len(self.failures) < 20:
                    self.failures.append(f"{protocol}: {type(error).__name__}: {error}"[:300])

    def rest(self) -> None:
        address = urlparse(self.url).netloc
        bodies = {o.model: json.dumps({"inputs": [{"name": o.input, "shape": list(o.row.shape),
                                                   "datatype": "FP32", "data": o.row.ravel().tolist()}]})
                  for o in self.oracles}
        while not self.stopping.is_set():
            for oracle in self.oracles:
                error = None
                connection = http.client.HTTPConnection(address, timeout=10)
                try:
                    connection.request("POST", f"/v2/models/{oracle.model}/infer", bodies[oracle.model],
                                       {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    answer = json.loads(response.read())
                    if response.status != 200:
                        raise AssertionError(f"status {response.status}: {answer}")
                    oracle.check(answer["outputs"][0]["data"], answer["model_version"],
                                 self.good[oracle.model])
                except Exception as failure:  # a dropped connection, a wrong status, number or version
                    error = failure
                finally:
                    connection.close()
                self.count("rest", error)

    def grpc(self) -> None:
        import tritonclient.grpc as triton

        client = grpc_client(self.grpc_address)
        inputs = {}
        for oracle in self.oracles:
            inputs[oracle.model] = triton.InferInput(oracle.input, list(oracle.row.shape), "FP32")
            inputs[oracle.model].set_data_from_numpy(oracle.row)
        while not self.stopping.is_set():
            for oracle in self.oracles:
                error = None
                try:
                    result = client.infer(oracle.model, [inputs[oracle.model]], client_timeout=10)
                    [output] = result.get_response().outputs
                    oracle.check(result.as_numpy(output.name), result.get_response().model_version,
                                 self.good[oracle.model])
                except Exception as failure:  # a failed call, a wrong number or version
                    error = failure
                self.count("grpc", error)
        client.close()


# --- the writer and its watches -----------------------------------------------------------------

@dataclass
class Broken:
    kind: str
    where: Where
    seconds: float | None = None  # from the write until reported everywhere (inf: never); None while watched


@dataclass
class Good:
    model: str
    version: int
    rest: float | None = None  # from the write until served everywhere, by protocol
    grpc: float | None = None


@dataclass
class Entry:
    """A folder the writer put in the repository, and the watches of what it wrote there."""

    path: Path
    model: str
    good: Good | None
    watches: list[threading.Thread] = field(default_factory=list)

    @property
    def watched(self) -> bool:
        return not any(watch.is_alive() for watch in self.watches)

    @property
    def served(self) -> bool:
        return self.good is not None and self.watched and max(self.good.rest, self.good.grpc) < GIVE_UP


class Writer(threading.Thread):
    def __init__(self, url: str, grpc: str, log: RegistryLog, repository: Path, rng: random.Random,
                 seconds: float, good: dict[str, set[str]]):
        super().__init__()
        self.url, self.grpc, self.log, self.repository, self.rng = url, grpc, log, repository, rng
        self.seconds, self.good = seconds, good
        self.models = sorted(good)
        self.numbers = dict.fromkeys(self.models, 2)
        self.entries = [Entry(repository / m / "1", m, Good(m, 1, 0.0, 0.0)) for m in self.models]
        self.broken: list[Broken] = []
        self.goods: list[Good] = []
        self.policies: dict[str, Broken] = {}  # the last bad policy written per model
        self.watches: list[threading.Thread] = []
        self.removed = 0
        self.written = 0

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            self.write_one()
            removable = self.removable()
            if removable and (self.rng.random() < 0.3 or len(self.entries) > KEPT):
                entry = self.rng.choice(removable)
                shutil.rmtree(entry.path)
                self.entries.remove(entry)
                self.removed += 1
            time.sleep(self.rng.uniform(1, 3))
        for watch in self.watches:
            watch.join()

    def number(self, model: str) -> int:
        self.numbers[model] += 1
        return self.numbers[model] - 1

    def write_one(self) -> None:
        model, roll, n = self.rng.choice(self.models), self.rng.random(), self.written
        self.written += 1
        since = self.log.mark()  # what is logged from here on may be about this write
        if roll < 0.3:
            version = self.number(model)
            self.good[model].add(str(version))  # before the rename: it may answer from then on
            path = new_version(self.repository, model, version)
            self.watch_good(Entry(path, model, Good(model, version)), since)
        elif roll < 0.35:
            self.partial_copy(model)
        elif roll < 0.45:
            name = self.rng.choice([f"0{n}", f"{n}e3", f"-{n}", f" {n}", str(2**63 + n)])
            where = version_folder(name)(self.repository, model, 0)
            self.watch_broken(Entry(self.repository / model / name, model, None), since, "version folder",
                              where, "not a version")
        elif roll < 0.5:
            # Not UTF-8 either: the index shows the byte escaped (service.repository.scan.shown).
            name = self.rng.choice([f"bad name! {n}", f"lost+found{n}", os.fsdecode(b"caf\xe9-%d" % n)])
            model_folder(name)(self.repository, model, 0)
            self.watch_broken(Entry(self.repository / name, model, None), since, "model folder",
                              (shown(name), ""), "not a model name")
        elif roll < 0.55 and self.policy_free(model):
            # The other kind than the model's last one, so that its reason tells this write apart.
            last = self.policies.get(model)
            kind = self.rng.choice([kind for kind in POLICIES if last is None or kind != last.kind])
            write, word = POLICIES[kind]
            where = write(self.repository, model, 0)
            self.policies[model] = self.watch_broken(None, since, kind, where, word)
        else:
            kind = self.rng.choice(list(BROKEN_VERSIONS))
            damage, word = BROKEN_VERSIONS[kind]
            version = self.number(model)
            where = broken_version(damage)(self.repository, model, version)
            self.watch_broken(Entry(self.repository / model / str(version), model, None), since, kind,
                              where, word)

    def policy_free(self, model: str) -> bool:
        """A new bad policy only once the last one of the model was reported."""
        last = self.policies.get(model)
        return last is None or (last.seconds is not None and last.seconds < GIVE_UP)

    def partial_copy(self, model: str) -> None:
        """A version copied straight into place, file by file, with pauses: refused at each stage,
        served once complete."""
        version, source = self.number(model), MODELS / model / "1"
        folder, where = self.repository / model / str(version), (model, str(version))
        entry = Entry(folder, model, None)
        since = self.log.mark()
        folder.mkdir()
        document = json.loads((source / "card.json").read_text())
        (folder / "card.json").write_text(json.dumps({**document, "version": version}))
        graph = (source / "model.onnx").read_bytes()
        (folder / "model.onnx").write_bytes(graph[: len(graph) // 2])
        self.watch_broken(entry, since, "copy arriving: half of model.onnx", where, "sha256")
        time.sleep(STAGE)
        since = self.log.mark()
        with (folder / "model.onnx").open("ab") as rest:
            rest.write(graph[len(graph) // 2:])
        self.watch_broken(entry, since, "copy arriving: no weights.npz yet", where, "weights.npz is missing")
        time.sleep(STAGE)
        since = self.log.mark()
        self.good[model].add(str(version))
        shutil.copy(source / "weights.npz", folder)
        entry.good = Good(model, version)
        self.watch_good(entry, since)

    def watch_broken(self, entry: Entry | None, since: int, kind: str, where: Where, word: str) -> Broken:
        broken = Broken(kind, where)
        self.broken.append(broken)

        def watch():
            broken.seconds = seconds_until(lambda: refused_everywhere(self.log, since, self.url, where, word))

        self.start_watch(entry, watch)
        return broken

    def watch_good(self, entry: Entry, since: int) -> None:
        good = entry.good
        self.goods.append(good)

        def rest():
            good.rest = seconds_until(lambda: served_everywhere(
                self.log, since, "rest", lambda: rest_ready(self.url, good.model, good.version),
                good.model, good.version))

        def grpc():
            good.grpc = seconds_until(lambda: served_everywhere(
                self.log, since, "grpc", lambda: grpc_ready(self.grpc, good.model, good.version),
                good.model, good.version))

        self.start_watch(entry, rest)
        self.start_watch(entry, grpc)

    def start_watch(self, entry: Entry | None, watch: Callable[[], None]) -> None:
        thread = threading.Thread(target=watch)
        thread.start()
        self.watches.append(thread)
        if entry is not None:  # else a policy file: never removed
            entry.watches.append(thread)
            if entry not in self.entries:
                self.entries.append(entry)

    def removable(self) -> list[Entry]:
        """Folders whose watches are done; a good version only while another one of its model is
        served everywhere, so that default-version requests always find one."""
        served = Counter(entry.model for entry in self.entries if entry.served)
        return [entry for entry in self.entries if entry.watched
                and (not entry.served or served[entry.model] > 1)]


# --- the run ------------------------------------------------------------------------------------

def grpc_processes(server) -> list[int]:
    return sorted(pid for pid, (_, command) in server.descendants().items()
                  if "service.grpc.server" in command)


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    return f"median {statistics.median(values):.2f} s, worst {max(values):.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rest-threads", type=int, default=3)
    parser.add_argument("--grpc-threads", type=int, default=2)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    models = sorted(path.name for path in MODELS.iterdir() if (path / "1").is_dir())
    oracles = [Oracle.of(model, rng) for model in models]
    good = {model: {"1"} for model in models}  # the versions allowed to answer: never a broken one

    with tempfile.TemporaryDirectory() as scratch:
        repository, log = Path(scratch) / "models", Path(scratch) / "service.log"
        shutil.copytree(MODELS, repository)
        grpc = f"127.0.0.1:{free_port()}"
        environment = {"SERVING_MODEL_REPOSITORY": str(repository), "SERVING_WORKERS": str(WORKERS),
                       "SERVING_POLL_INTERVAL": str(INTERVAL), "SERVING_GRPC_BIND": grpc}
        with front_door(environment, log) as server, RegistryLog(log) as logged:
            if seconds_until(lambda: all(grpc_ready(grpc, model, 1) for model in models), 60) == float("inf"):
                print(f"FAIL the gRPC processes do not answer on {grpc}: {server.tail()}")
                return 1
            workers, grpc_servers = server.gunicorn_workers(), grpc_processes(server)
            print(f"python -m service on {server.url} and gRPC {grpc}: gunicorn workers {workers}, gRPC "
                  f"processes {grpc_servers}; the repository polled every {INTERVAL} s, written for "
                  f"{args.minutes:g} min (seed {args.seed})", flush=True)
            rss_before = memory(workers)
            writer = Writer(server.url, grpc, logged, repository, rng, args.minutes * 60, good)
            with Clients(server.url, grpc, oracles, good, args.rest_threads, args.grpc_threads) as clients:
                writer.start()
                started = time.monotonic()
                while writer.is_alive():
                    writer.join(timeout=60)
                    print(f"{time.monotonic() - started:5.0f} s: {writer.written} writes, "
                          f"{len(writer.goods)} good versions, {len(writer.broken)} broken states, "
                          f"{writer.removed} removed; "
                          f"REST {clients.sent['rest']} sent, {clients.failed['rest']} failed; gRPC "
                          f"{clients.sent['grpc']} sent, {clients.failed['grpc']} failed", flush=True)
                time.sleep(BOUND)  # every process has polled the last write
                since = logged.mark()
                time.sleep(3 * INTERVAL)
                relogged = sum(" ERROR " in line for line in logged.lines[since:])
            replaced = (sorted(set(server.gunicorn_workers()) - set(workers))
                        + sorted(set(grpc_processes(server)) - set(grpc_servers)))
            rss_after = memory(server.gunicorn_workers())
            tracebacks = log.read_bytes().count(b"Traceback")

    rest_times = [g.rest for g in writer.goods]
    grpc_times = [g.grpc for g in writer.goods]
    on_time = [b for b in writer.broken if b.seconds <= BOUND]
    print(f"REST v2 JSON through nginx: {clients.sent['rest']:,} requests, {clients.failed['rest']} failed")
    print(f"gRPC ModelInfer: {clients.sent['grpc']:,} requests, {clients.failed['grpc']} failed")
    for failure in clients.failures:
        print(f"     {failure}")
    print(f"good versions written: {len(writer.goods)}; from the rename (or last file) to served "
          f"everywhere: REST {spread(rest_times)}; gRPC {spread(grpc_times)}")
    print(f"broken states written: {len(writer.broken)}, in the index with their reason within {BOUND} s: "
          f"{len(on_time)}; {spread([b.seconds for b in writer.broken])}")
    for kind, count in sorted(Counter(b.kind for b in writer.broken).items()):
        late = [f"{b.where}: {b.seconds:.2f} s" for b in writer.broken
                if b.kind == kind and b.seconds > BOUND]
        print(f"     {count:3} {kind}" + (f" (late: {', '.join(late)})" if late else ""))
    print(f"folders removed: {writer.removed}; gunicorn worker RSS "
          f"{statistics.mean(m['rss_mb'] for m in rss_before):.1f} MB -> "
          f"{statistics.mean(m['rss_mb'] for m in rss_after):.1f} MB")
    failed = sum(clients.failed.values())
    checks = {
        f"failed requests to good models: {failed} of {sum(clients.sent.values()):,}":
            failed == 0 and min(clients.sent.values()) > 0,
        f"good versions served within {BOUND} s by REST and gRPC: "
        f"{sum(max(g.rest, g.grpc) <= BOUND for g in writer.goods)} of {len(writer.goods)}":
            all(max(g.rest, g.grpc) <= BOUND for g in writer.goods),
        f"broken states reported with their reason within {BOUND} s: {len(on_time)} of {len(writer.broken)}":
            len(on_time) == len(writer.broken),
        "the same workers and gRPC processes throughout" + (f" (new: {replaced})" if replaced else ""):
            not replaced,
        f"refusals logged over {3 * INTERVAL} s of polls once the writes stopped: {relogged}; "
        f"tracebacks in the log: {tracebacks}": relogged == 0 and tracebacks == 0,
    }
    for text, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {text}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
