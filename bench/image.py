"""make bench, image part: an imported convolutional network served against its onnxruntime floor.

The network is keras.applications.MobileNetV3Small(weights=None, input_shape=(96, 96, 3),
classes=10), built in the run with a fixed seed (nothing downloaded), saved as .keras and
imported with the real command line, `python -m training import FILE --name mobilenet
--repository DIR`, into a temporary repository that the service then serves as users run it,
`python -m service`: nginx (the front door) in front of gunicorn with the project's configuration
(default workers and threads unless --image-env says otherwise).

Calibrated batch normalisation: with weights=None every BatchNormalization layer holds its
initial statistics (mean 0, variance 1) while the random convolutions shrink the signal by
orders of magnitude per block; the logits come out near 1e-10 and the softmax answers exactly
0.1 for every class of every image. A correctness check on such a network passes whatever the
service does with the pixels. So the build sets each layer's moving mean and variance to the
statistics of one seeded batch of pixels (one forward pass in training mode, momentum 0), the
data-dependent initialisation people use for untrained networks. The graph, its operators and
its arithmetic are unchanged (the statistics fold into the convolutions either way); only the
numbers differ, and the answers then depend on the image (rows differ by about 1e-2).

The floor is onnxruntime in process on the same cores, batch 32 of 96x96x3 FP32 pixels: the
better of (a) one process with intra_op_num_threads = the core count and (b) one single-threaded
process per core, all running over the same wall-clock window (their rows/s summed). Rounds
alternate floor (a), floor (b), the service with v2 binary tensors (binary outputs too) and the
service with v2 JSON, each driven by wrk; every figure is the median of the rounds. Before any
measurement one served answer (binary and JSON) must equal onnxruntime in process within 1e-5,
or the bench fails (as it does when the answers of different images are too alike for the
check to mean anything).

On a shared machine rows/s move with whatever else runs; the CPU time per batch hardly does.
So the run also reports onnxruntime's CPU milliseconds per batch (floor (b), one thread) and
the workers' CPU milliseconds per request (from /proc, over each wrk run): their quotient is
the share of a worker's work that is the model's, and it bounds the ratio to the floor. nginx's
CPU milliseconds per request (it reads each body whole, and keeps one over 1 MB in a temporary
file, before gunicorn sees it) are reported beside them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime

from bench.harness import Server, front_door, wrk

NAME = "mobilenet"
SHAPE = (96, 96, 3)
CLASSES = 10
BATCH = 32
SEED = 0
TOLERANCE = 1e-5  # served answer vs onnxruntime in process
CONNECTIONS = 4
ROUNDS, SECONDS = 5, 3  # short rounds, many: the floor and the service see the same machine
HEADER_LENGTH = "Inference-Header-Content-Length"


class BenchFailure(RuntimeError):
    """The served model answered wrongly, or could not be built, imported or served."""


# --- the model --------------------------------------------------------------------------------

def build(path: Path) -> None:
    """MobileNetV3Small (no weights downloaded), batch normalisation calibrated, saved as .keras.

    Run in a child process (`python -m bench.image build PATH`), so that TensorFlow never
    shares the bench's process with the floor and the load.
    """
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=SHAPE, classes=CLASSES)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0  # the moving statistics become this batch's
    model(pixels(64, seed=SEED + 1), training=True)
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum
    model.save(path)


def pixels(rows: int, seed: int = SEED) -> np.ndarray:
    """Images as a camera gives them: whole numbers 0..255, as FP32 (the network rescales them)."""
    return np.random.default_rng(seed).integers(0, 256, (rows, *SHAPE)).astype(np.float32)


def build_and_import(folder: Path) -> dict:
    """The .keras file, then the real import command into folder/repository; timings in seconds."""
    keras_file, repository = folder / f"{NAME}.keras", folder / "repository"
    started = time.perf_counter()
    built = subprocess.run([sys.executable, "-m", "bench.image", "build", str(keras_file)],
                           capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if built.returncode != 0:
        raise BenchFailure(f"building {keras_file.name} failed: {built.stderr.strip()[-2000:]}")
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    imported = subprocess.run([sys.executable, "-m", "training", "import", str(keras_file),
                               "--name", NAME, "--repository", str(repository)],
                              capture_output=True, text=True)
    import_s = time.perf_counter() - started
    if imported.returncode != 0:
        raise BenchFailure(f"python -m training import failed ({imported.returncode}): "
                           f"{imported.stderr.strip()[-2000:]}")
    version = repository / NAME / "1"
    card = json.loads((version / "card.json").read_text())
    return {"repository": repository, "model": version / "model.onnx", "card": card,
            "build_s": build_s, "import_s": import_s,
            "import_output": imported.stdout.strip().splitlines(),
            "onnx_mb": (version / "model.onnx").stat().st_size / 2**20}


# --- the floor: onnxruntime in process --------------------------------------------------------

def session(model: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def _floor_process(connection, model: str, threads: int) -> None:
    """One floor process: a session, then rounds on command: (start, seconds) -> (calls, elapsed, ms)."""
    runner = session(Path(model), threads)
    feeds = {runner.get_inputs()[0].name: pixels(BATCH)}
    for _ in range(3):
        runner.run(None, feeds)
    connection.send("ready")
    while (command := connection.recv()) is not None:
        start, seconds = command
        time.sleep(max(0.0, start - time.monotonic()))
        deadline, calls, durations, cpu = start + seconds, 0, [], time.process_time()
        while True:
            began = time.monotonic()
            runner.run(None, feeds)
            ended = time.monotonic()
            calls += 1
            durations.append(ended - began)
            if ended >= deadline:
                break
        cpu = time.process_time() - cpu  # every thread of the process
        connection.send((calls, ended - start, 1000 * statistics.median(durations), 1000 * cpu / calls))


class Floor:
    """Processes that hold a session each and run rounds together over one wall-clock window."""

    def __init__(self, model: Path, processes: int, threads: int):
        context = multiprocessing.get_context("spawn")  # no onnxruntime thread pool forked
        self.links, self.processes = [], []
        for _ in range(processes):
            mine, theirs = context.Pipe()
            process = context.Process(target=_floor_process, args=(theirs, str(model), threads),
                                      daemon=True)
            process.start()
            self.links.append(mine)
            self.processes.append(process)
        for link in self.links:
            if link.recv() != "ready":
                raise BenchFailure("a floor process did not start")

    def round(self, seconds: float) -> dict:
        """Rows/s summed over the processes (each its rows over its own window from the common
        start to the end of its last call), the median milliseconds per call, and the CPU
        milliseconds per call (all threads)."""
        start = time.monotonic() + 0.05
        for link in self.links:
            link.send((start, seconds))
        answers = [link.recv() for link in self.links]
        return {"rows_per_s": sum(BATCH * calls / elapsed for calls, elapsed, _, _ in answers),
                "ms_per_call": statistics.median(ms for _, _, ms, _ in answers),
                "cpu_ms_per_call": statistics.median(cpu for _, _, _, cpu in answers)}

    def close(self) -> None:
        for link in self.links:
            link.send(None)
        for process in self.processes:
            process.join(timeout=10)


# --- the service ------------------------------------------------------------------------------

def v2_binary(input_name: str, x: np.ndarray, binary_output: bool = True) -> tuple[bytes, int]:
    blob = x.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "parameters": {"binary_data_output": binary_output}}).encode()
    return header + blob, len(header)


def v2_json(input_name: str, x: np.ndarray) -> bytes:
    """Pixels as JSON integers, as a client holding uint8 images sends them (FP32 declared)."""
    return json.dumps({"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.astype(np.int64).ravel().tolist()}]}).encode()


def infer(url: str, body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """POST one v2 request; the outputs by name, from JSON or binary tensors."""
    headers = {"Content-Type": "application/json"}
    if header_length is not None:
        headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(header_length)}
    request = urllib.request.Request(f"{url}/v2/models/{NAME}/infer", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        payload, length = response.read(), response.headers.get(HEADER_LENGTH)
    document = json.loads(payload[:int(length)] if length else payload)
    offset, outputs = int(length or 0), {}
    for tensor in document["outputs"]:
        size = tensor.get("parameters", {}).get("binary_data_size")
        if size is None:
            values = np.asarray(tensor["data"], dtype=np.float32)
        else:
            values = np.frombuffer(payload[offset:offset + size], dtype="<f4")
            offset += size
        outputs[tensor["name"]] = values.reshape(tensor["shape"])
    return outputs


def check_answer(url: str, model: Path, card: dict) -> dict:
    """One batch through the service, binary and JSON, against onnxruntime in process."""
    input_name, output_name = card["inputs"][0]["name"], card["outputs"][0]["name"]
    x = pixels(BATCH, seed=SEED + 2)
    (reference,) = session(model, 1).run([output_name], {input_name: x})
    # A check that cannot tell one image's answer from another's checks nothing.
    spread = float(np.abs(reference - reference[::-1]).max())
    if spread <= 100 * TOLERANCE:
        raise BenchFailure(f"the check is blind: answers differ by only {spread:.1e} between images")
    figures = {"rows": BATCH, "tolerance": TOLERANCE, "answers_differ_between_rows_by": spread}
    for kind, (body, header_length) in {"binary": v2_binary(input_name, x),
                                        "json": (v2_json(input_name, x), None)}.items():
        served = infer(url, body, header_length)[output_name]
        if served.shape != reference.shape:
            raise BenchFailure(f"v2 {kind}: served shape {list(served.shape)}, "
                               f"expected {list(reference.shape)}")
        difference = float(np.abs(served - reference).max())
        figures[f"max_abs_difference_{kind}"] = difference
        if not difference <= TOLERANCE:
            raise BenchFailure(f"v2 {kind}: the served answer differs from onnxruntime in process "
                               f"by {difference:.2e} (> {TOLERANCE:g})")
    return figures


def served_round(url: str, server: Server, body: Path, header_length: int | None,
                 connections: int, seconds: int) -> dict:
    """One wrk run, and the CPU milliseconds per request of gunicorn's workers and of nginx."""
    result = wrk(url, body, header_length, connections, seconds, server)
    cpu = result["cpu_us_per_request"]
    result["cpu_ms_per_request"] = cpu["workers"] / 1000
    result["nginx_cpu_ms_per_request"] = cpu.get("nginx", 0.0) / 1000
    return result


def models_loaded(workers: int, level: str):
    """A readiness test: the front door answers that the model is ready, and (at log level info,
    which the bench sets unless told otherwise) every worker has logged the model as loaded."""
    def ready(url: str, log: Path) -> bool:
        text = log.read_text(errors="replace") if log.exists() else ""
        if level.lower() in ("info", "debug") and \
                len(re.findall(rf"model {NAME} version 1 loaded", text)) < workers:
            return False
        try:
            with urllib.request.urlopen(f"{url}/v2/models/{NAME}/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False
    return ready


# --- the run ----------------------------------------------------------------------------------

def run(folder: Path, rounds: int = ROUNDS, seconds: int = SECONDS, connections: int = CONNECTIONS,
        environment: dict | None = None, log=print) -> dict:
    """Build, import, check, then alternate floor and service rounds; the figures as a dict."""
    environment = dict(environment or {})
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    log(f"image model: building MobileNetV3Small {SHAPE} and importing it with python -m training import")
    imported = build_and_import(folder)
    said = " / ".join(imported["import_output"][1:2])  # the importer's parity line
    log(f"  built in {imported['build_s']:.1f} s; imported in {imported['import_s']:.1f} s "
        f"({imported['onnx_mb']:.1f} MB of ONNX; {said})")
    card = imported["card"]
    input_name = card["inputs"][0]["name"]
    x = pixels(BATCH)
    binary_body, json_body = folder / "binary.body", folder / "json.body"
    payload, header_length = v2_binary(input_name, x)
    binary_body.write_bytes(payload)
    json_body.write_bytes(v2_json(input_name, x))

    cores = os.cpu_count() or 1
    workers = int(environment.get("SERVING_WORKERS", cores))
    threads = int(environment.get("SERVING_THREADS", 1))  # as service/process/gunicorn.conf.py reads them
    worker_class = environment.get("SERVING_WORKER_CLASS", "gthread" if threads > 1 else "sync")
    floors = {"a": Floor(imported["model"], 1, cores), "b": Floor(imported["model"], cores, 1)}
    samples = {"floor_a": [], "floor_b": [], "binary": [], "json": [], "load": []}
    service_env = {"SERVING_MODEL_REPOSITORY": str(imported["repository"]), "SERVING_LOG_LEVEL": "info",
                   **environment}
    try:
        with front_door(service_env, folder / "service.log",
                        ready=models_loaded(workers, service_env["SERVING_LOG_LEVEL"])) as server:
            url = server.url
            memory_loaded = server.worker_memory()
            if len(memory_loaded) != workers:
                raise BenchFailure(f"found {len(memory_loaded)} gunicorn workers, expected {workers}")
            check = check_answer(url, imported["model"], card)
            log(f"  served answers equal onnxruntime in process: binary "
                f"{check['max_abs_difference_binary']:.1e}, JSON {check['max_abs_difference_json']:.1e} "
                f"(<= {TOLERANCE:g}; answers differ between images by "
                f"{check['answers_differ_between_rows_by']:.1e})")
            target = f"{url}/v2/models/{NAME}/infer"
            for number in range(1, rounds + 1):
                samples["floor_a"].append(floors["a"].round(seconds))
                samples["floor_b"].append(floors["b"].round(seconds))
                samples["binary"].append(served_round(target, server, binary_body, header_length,
                                                      connections, seconds))
                samples["json"].append(served_round(target, server, json_body, None, connections, seconds))
                samples["load"].append(os.getloadavg()[0])
                log(f"  round {number}: floor a {samples['floor_a'][-1]['rows_per_s']:.0f}, "
                    f"floor b {samples['floor_b'][-1]['rows_per_s']:.0f}, "
                    f"v2 binary {samples['binary'][-1]['requests_per_s'] * BATCH:.0f}, "
                    f"v2 JSON {samples['json'][-1]['requests_per_s'] * BATCH:.0f} rows/s")
            memory_after = server.worker_memory()
    finally:
        for floor in floors.values():
            floor.close()

    def median(kind: str, key: str, scale: float = 1) -> float:
        return statistics.median(sample[key] * scale for sample in samples[kind])

    def served(kind: str) -> dict:
        return {"rows_per_s": median(kind, "requests_per_s", BATCH),
                "requests_per_s": median(kind, "requests_per_s"),
                "p50_ms": median(kind, "p50_us", 1e-3), "p99_ms": median(kind, "p99_us", 1e-3),
                "cpu_ms_per_request": median(kind, "cpu_ms_per_request"),
                "nginx_cpu_ms_per_request": median(kind, "nginx_cpu_ms_per_request"),
                "rounds": samples[kind]}

    floor_a, floor_b = median("floor_a", "rows_per_s"), median("floor_b", "rows_per_s")
    chosen = "a" if floor_a >= floor_b else "b"
    floor = max(floor_a, floor_b)
    binary, json_figures = served("binary"), served("json")
    # The machine may be shared: a round's floor and service ran back to back, under the same load.
    per_round = [b["requests_per_s"] * BATCH / max(a["rows_per_s"], c["rows_per_s"])
                 for a, c, b in zip(samples["floor_a"], samples["floor_b"], samples["binary"], strict=True)]
    # CPU time per batch hardly depends on what else the machine runs: onnxruntime's own cost
    # (one thread, floor b) over what a worker spends on a request.
    onnxruntime_cpu = median("floor_b", "cpu_ms_per_call")

    def mean_memory(sample: list[dict]) -> dict:
        return {"rss_mb": statistics.mean(w["rss_mb"] for w in sample),
                "pss_mb": statistics.mean(w["pss_mb"] for w in sample), "workers": sample}

    failures = sum(s["non_2xx"] + s["socket_errors"] for s in samples["binary"] + samples["json"])
    return {
        "model": {"name": NAME, "network": "keras.applications.MobileNetV3Small(weights=None, "
                  "input_shape=(96, 96, 3), classes=10), batch normalisation calibrated on one "
                  "seeded batch", "seed": SEED, "onnx_mb": imported["onnx_mb"],
                  "parity": card.get("parity", {}).get("max_abs_difference")},
        "build_s": imported["build_s"],
        "import_s": imported["import_s"],
        "batch": BATCH,
        "connections": connections,
        "workers": workers,
        "worker_class": worker_class,
        "threads": threads,
        "service_environment": environment,
        "served_by": "python -m service (nginx front door, gunicorn on a unix socket)",
        "rounds": rounds,
        "seconds_per_round": seconds,
        "check": check,
        "floor": {
            "a_one_process_threads": cores, "a_rows_per_s": floor_a,
            "a_ms_per_call": median("floor_a", "ms_per_call"),
            "a_cpu_ms_per_call": median("floor_a", "cpu_ms_per_call"),
            "b_processes": cores, "b_rows_per_s": floor_b,
            "b_ms_per_call": median("floor_b", "ms_per_call"),
            "b_cpu_ms_per_call": median("floor_b", "cpu_ms_per_call"),
            "chosen": chosen, "rows_per_s": floor,
            "rounds": {"a": samples["floor_a"], "b": samples["floor_b"]},
        },
        "binary": binary,
        "json": json_figures,
        "ratio_binary": binary["rows_per_s"] / floor,
        "ratio_json": json_figures["rows_per_s"] / floor,
        "ratio_binary_per_round": per_round,
        "ratio_binary_median_of_rounds": statistics.median(per_round),
        "cpu_share_binary": onnxruntime_cpu / binary["cpu_ms_per_request"],
        "cpu_share_json": onnxruntime_cpu / json_figures["cpu_ms_per_request"],
        "target_ratio": 0.8,
        "memory": {"after_load": mean_memory(memory_loaded), "after_bench": mean_memory(memory_after)},
        "failed_requests": failures,
        "load_average": {"before": load_before, "rounds": samples["load"]},
        # CPU that neither the service nor wrk used during the served rounds: other processes
        "other_share_max": max(r["machine"]["other_share"] for r in samples["binary"] + samples["json"]),
        "elapsed_s": time.monotonic() - started,
    }


def lines(figures: dict) -> list[str]:
    """The image part of the bench table."""
    floor, memory = figures["floor"], figures["memory"]
    binary, json_figures = figures["binary"], figures["json"]
    env = " ".join(f"{k}={v}" for k, v in figures["service_environment"].items())
    check = figures["check"]
    difference = max(check["max_abs_difference_binary"], check["max_abs_difference_json"])
    verdict = "meets" if figures["ratio_binary"] >= figures["target_ratio"] else "MISSES"
    return [
        f"imported MobileNetV3Small 96x96x3, batch {figures['batch']} FP32, "
        f"python -m service, {figures['workers']} {figures['worker_class']} workers x "
        f"{figures['threads']} thread"
        f"{'s' if figures['threads'] > 1 else ''}{' (' + env + ')' if env else ''}, "
        f"wrk c={figures['connections']}; "
        f"medians of {figures['rounds']} rounds of {figures['seconds_per_round']:g} s",
        f"  import {figures['import_s']:.1f} s (python -m training import; "
        f"build {figures['build_s']:.1f} s); "
        f"served answers vs onnxruntime in process: {difference:.1e}",
        f"{'  scenario':<46}{'rows/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'x floor':>9}{'CPU ms/batch':>14}",
        f"{'  floor (a) 1 process, ' + str(floor['a_one_process_threads']) + ' threads':<46}"
        f"{floor['a_rows_per_s']:>10.0f}{floor['a_ms_per_call']:>8.1f}{'':>8}"
        f"{floor['a_rows_per_s'] / floor['rows_per_s']:>9.2f}{floor['a_cpu_ms_per_call']:>14.1f}",
        f"{'  floor (b) ' + str(floor['b_processes']) + ' processes, 1 thread each':<46}"
        f"{floor['b_rows_per_s']:>10.0f}{floor['b_ms_per_call']:>8.1f}{'':>8}"
        f"{floor['b_rows_per_s'] / floor['rows_per_s']:>9.2f}{floor['b_cpu_ms_per_call']:>14.1f}",
        f"{'  service v2 binary (binary outputs)':<46}{binary['rows_per_s']:>10.0f}"
        f"{binary['p50_ms']:>8.1f}{binary['p99_ms']:>8.1f}{figures['ratio_binary']:>9.2f}"
        f"{binary['cpu_ms_per_request']:>14.1f}",
        f"{'  service v2 JSON':<46}{json_figures['rows_per_s']:>10.0f}"
        f"{json_figures['p50_ms']:>8.1f}{json_figures['p99_ms']:>8.1f}{figures['ratio_json']:>9.2f}"
        f"{json_figures['cpu_ms_per_request']:>14.1f}",
        f"  v2 binary {figures['ratio_binary']:.2f}x the floor (floor {floor['chosen']}): {verdict} "
        f"the {figures['target_ratio']}x target; round by round "
        + ", ".join(f"{r:.2f}" for r in figures["ratio_binary_per_round"])
        + f" (median {figures['ratio_binary_median_of_rounds']:.2f})"
        + "; load average " + ", ".join(f"{x:.1f}" for x in figures["load_average"]["rounds"])
        + (f"; other processes: up to {100 * figures['other_share_max']:.0f}% of the CPU during the "
           "served rounds" if "other_share_max" in figures else ""),
        f"  CPU per batch: onnxruntime {floor['b_cpu_ms_per_call']:.1f} ms (1 thread); a worker "
        f"{binary['cpu_ms_per_request']:.1f} ms per v2 binary request "
        f"({100 * figures['cpu_share_binary']:.0f} % of it onnxruntime's), "
        f"{json_figures['cpu_ms_per_request']:.1f} ms per v2 JSON request "
        f"({100 * figures['cpu_share_json']:.0f} %); nginx {binary['nginx_cpu_ms_per_request']:.2f} ms "
        f"per binary and {json_figures['nginx_cpu_ms_per_request']:.2f} ms per JSON request",
        f"  memory per worker (MB): after load RSS {memory['after_load']['rss_mb']:.1f} "
        f"PSS {memory['after_load']['pss_mb']:.1f}; after the bench RSS "
        f"{memory['after_bench']['rss_mb']:.1f} PSS {memory['after_bench']['pss_mb']:.1f}",
    ]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "build":
        build(Path(sys.argv[2]))
    else:
        sys.exit("usage: python -m bench.image build FILE.keras "
                 "(the bench itself: python -m bench.run --only-image)")
