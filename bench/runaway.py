"""make bench, the runaway part: what a runaway model costs the healthy ones.

`python -m service` (2 workers, 2 gRPC processes, the default limits) serves the built-in models
beside `runaway`, demand's signature with a Loop driven by the input that runs for hours on
demand's example row (tests/onnx_models.runaway_loop). A paced load asks demand RATE times a
second over REST, each answer checked against the NumPy forward propagation: SECONDS quiet, then
SECONDS while two REST clients and eight gRPC clients (5 s deadline) ask runaway again as soon
as each answer comes (after the Retry-After a refusal names, as a client library does). The
figures: demand's p50 and p99 quiet and attacked, and their ratio; what the attackers were
answered; whether every gunicorn worker and gRPC process still answers demand afterwards.

    python -m bench.runaway   # prints the lines and updates runaway in bench/results.json
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from bench.harness import ROOT, ClientThreads, free_port, front_door, write_part
from modelcard import forward

KEY = "runaway"
RATE, SECONDS = 100, 20
P99_CEILING = 1.5  # attacked p99 over quiet p99: the "within their normal p99", with noise
ROWS = np.array([[19.99, 4.5, 2000, 7], [5.0, 1.0, 300, 2]], np.float32)
EXAMPLE = [[19.99, 4.5, 2000, 7]]


def body(rows) -> bytes:
    rows = np.asarray(rows, np.float32)
    return json.dumps({"inputs": [{"name": "features", "shape": list(rows.shape), "datatype": "FP32",
                                   "data": rows.ravel().tolist()}]}).encode()


def post(url: str, data: bytes, timeout: float = 60) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


class Paced:
    """demand at `rate` requests a second from a few threads, each answer checked."""

    def __init__(self, url: str, rate: int, threads: int = 4):
        self.url, self.interval = f"{url}/v2/models/demand/infer", threads / rate
        self.expected = forward.Network.load(ROOT / "models" / "demand" / "1").predict(ROWS)
        self.latencies: list[float] = []
        self.wrong = 0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]

    def run(self):
        data, due = body(ROWS), time.monotonic()
        while not self.stopping.is_set():
            started = time.monotonic()
            status, raw, _ = post(self.url, data)
            self.latencies.append(time.monotonic() - started)
            if status != 200 or np.abs(np.array(json.loads(raw)["outputs"][0]["data"]).reshape(-1, 1)
                                       - self.expected).max() > 1e-6:
                self.wrong += 1
            due += self.interval
            time.sleep(max(0.0, due - time.monotonic()))

    def measure(self, seconds: float) -> dict:
        self.latencies, self.wrong = [], 0
        self.stopping.clear()
        self.threads = [threading.Thread(target=self.run) for _ in self.threads]
        for thread in self.threads:
            thread.start()
        time.sleep(seconds)
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)
        latencies = sorted(self.latencies)
        return {"requests": len(latencies), "wrong": self.wrong,
                "p50_ms": statistics.median(latencies) * 1e3,
                "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3}


class Attack(ClientThreads):
    """Two REST and eight gRPC clients asking runaway, each again as soon as answered."""

    def __init__(self, url: str, grpc_address: str):
        super().__init__(0)
        self.url, self.grpc_address = f"{url}/v2/models/runaway/infer", grpc_address
        self.answers: collections.Counter = collections.Counter()
        self.threads = [threading.Thread(target=self.rest) for _ in range(2)] + \
            [threading.Thread(target=self.grpc) for _ in range(8)]

    def rest(self):
        data = body(EXAMPLE)
        while not self.stopping.is_set():
            status, _, headers = post(self.url, data)
            self.answers[f"REST {status}"] += 1
            self.stopping.wait(float(headers.get("Retry-After", 0)))

    def grpc(self):
        import tritonclient.grpc as triton
        from tritonclient.utils import InferenceServerException

        client = triton.InferenceServerClient(self.grpc_address)
        features = triton.InferInput("features", [1, 4], "FP32")
        features.set_data_from_numpy(np.array(EXAMPLE, np.float32))
        try:
            while not self.stopping.is_set():
                try:
                    client.infer("runaway", [features], client_timeout=5.0)
                    status = "OK"
                except InferenceServerException as error:
                    status = str(error.status()).removeprefix("StatusCode.")
                self.answers[f"gRPC {status}"] += 1
                self.stopping.wait(1.0 if status == "RESOURCE_EXHAUSTED" else 0.0)
        finally:
            client.close()

def everyone_answers(url: str, grpc_address: str, expected: np.ndarray, tries: int = 16) -> bool:
    """demand answered right by many new connections (spread over every worker and gRPC process)."""
    import tritonclient.grpc as triton

    for _ in range(tries):
        status, raw, _ = post(f"{url}/v2/models/demand/infer", body(ROWS), timeout=5)
        if status != 200:
            return False
        client = triton.InferenceServerClient(grpc_address,
                                              channel_args=[("grpc.use_local_subchannel_pool", 1)])
        try:
            features = triton.InferInput("features", list(ROWS.shape), "FP32")
            features.set_data_from_numpy(ROWS)
            answer = client.infer("demand", [features], client_timeout=5).as_numpy("probability")
        finally:
            client.close()
        if np.abs(answer - expected).max() > 1e-6:
            return False
    return True


def run(folder: Path, rate: int = RATE, seconds: int = SECONDS, log=print) -> dict:
    from tests.onnx_models import runaway_loop, write_version

    repository = folder / "models"
    shutil.copytree(ROOT / "models", repository)
    write_version(repository, "runaway", 1, runaway_loop())
    grpc_address = f"127.0.0.1:{free_port()}"
    environment = {"SERVING_MODEL_REPOSITORY": str(repository), "SERVING_WORKERS": "2",
                   "SERVING_GRPC_BIND": grpc_address}
    with front_door(environment, folder / "service.log") as server:
        load = Paced(server.url, rate)
        quiet = load.measure(seconds)
        log(f"  quiet: {quiet}")
        with Attack(server.url, grpc_address) as attack:
            attacked = load.measure(seconds)
        log(f"  attacked: {attacked}; runaway answered {dict(attack.answers)}")
        serving = everyone_answers(server.url, grpc_address, load.expected)
    return {"rate": rate, "seconds": seconds, "quiet": quiet, "attacked": attacked,
            "p99_ratio": attacked["p99_ms"] / quiet["p99_ms"], "attackers": dict(attack.answers),
            "every_process_serves": serving, "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def lines(figures: dict) -> list[str]:
    quiet, attacked = figures["quiet"], figures["attacked"]
    verdict = "MEETS" if figures["p99_ratio"] <= P99_CEILING and not attacked["wrong"] else "MISSES"
    return [
        f"Runaway model (demand at {figures['rate']} req/s over REST; a Loop model asked by 2 REST and "
        "8 gRPC clients at once):",
        f"  demand p50 {quiet['p50_ms']:.2f} -> {attacked['p50_ms']:.2f} ms, p99 {quiet['p99_ms']:.2f} -> "
        f"{attacked['p99_ms']:.2f} ms: x{figures['p99_ratio']:.2f} ({verdict} <= x{P99_CEILING}); "
        f"wrong or failed answers {quiet['wrong'] + attacked['wrong']}",
        f"  runaway answered: {', '.join(f'{k} x{v}' for k, v in sorted(figures['attackers'].items()))}",
        f"  every worker and gRPC process answers demand afterwards: {figures['every_process_serves']}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=RATE)
    parser.add_argument("--seconds", type=int, default=SECONDS)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        figures = run(Path(scratch), args.rate, args.seconds)
    write_part(args.output, KEY, figures)
    print("\n".join(lines(figures)))
    return 0 if figures["every_process_serves"] and not figures["attacked"]["wrong"] else 1


if __name__ == "__main__":
    sys.exit(main())
