"""make bench, memory part: what every serving process adds, with the model cache off and on.

The repository is the built-in models plus an imported ResNet50: keras.applications.ResNet50(
weights=None, input_shape=(64, 64, 3)), built in the run with a fixed seed (nothing downloaded),
saved as .keras and imported with the real command, `python -m training import FILE --name
resnet50 --repository DIR` (94 MB of ONNX). The service runs as users run it, `python -m service`
(nginx, gunicorn's workers, as many gRPC processes), at SERVING_WORKERS=2 and 6, with
SERVING_MODEL_CACHE=off (each process loads its own copy: the design before the cache) and with a
cache folder (each version optimised once, memory-mapped by every process). Once every process
has loaded every model and gone idle, the figure is the total PSS of all the service's processes
(/proc/PID/smaps_rollup: shared pages divided among their sharers), after every worker and gRPC
process has answered ResNet50 requests (a mapped page counts once touched), and the PSS each extra
process adds ((total at 6 - total at 2) / 8 processes). The time from start to every process
serving ResNet50 at 6 workers is measured off, with an empty cache (one process optimises, the
others wait for it) and with a warm one. Before the figures, one ResNet50 answer served with the
cache must equal onnxruntime on the source model.onnx within 1e-4.

Roads, side by side (`roads`): N=6 bare processes (no service) holding one model each, three
ways: a private session from the bytes (the design before), the cache's entry mapped, and one
process that loads privately then forks (copy-on-write): total PSS, and milliseconds per
inference (median of 20). For ResNet50 (convolutions, re-laid NCHWc), a Dense-heavy network of
four 2048x2048 MatMuls (64 MB, whose weights onnxruntime prepacks privately per session; also
with prepacking off) and the digits model (small).

    python -m bench.memory    # or python -m bench.run --only-memory: about 5 minutes; writes the
                              # `models_in_memory` key of bench/results.json (make bench runs it last)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.harness import BENCH, ROOT, Server, cpu_seconds, free_port, front_door, memory, write_part

NAME = "resnet50"
SHAPE = (64, 64, 3)
SEED = 0
WORKERS = (2, 6)
ROUNDS = 3
ROAD_PROCESSES = 6
TOLERANCE = 1e-4
KEY = "models_in_memory"  # of bench/results.json
WARM_CPU_SECONDS = 0.1  # of each serving process, before its memory is measured


class BenchFailure(RuntimeError):
    """The model could not be built, imported or served, or answered wrongly."""


# --- the model --------------------------------------------------------------------------------

def build(path: Path) -> None:
    """ResNet50 with random weights, saved as .keras; in a child process (TensorFlow stays out of
    the bench's process)."""
    import keras

    keras.utils.set_random_seed(SEED)
    keras.applications.ResNet50(weights=None, input_shape=SHAPE).save(path)


def build_and_import(folder: Path) -> dict:
    """folder/repository: a copy of models/ plus ResNet50 imported by the project's importer."""
    keras_file, repository = folder / f"{NAME}.keras", folder / "repository"
    shutil.copytree(ROOT / "models", repository)
    started = time.perf_counter()
    for command in ([sys.executable, "-m", "bench.memory", "build", str(keras_file)],
                    [sys.executable, "-m", "training", "import", str(keras_file), "--name", NAME,
                     "--repository", str(repository)]):
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise BenchFailure(f"{' '.join(command[1:4])} failed: {done.stderr.strip()[-2000:]}")
    model = repository / NAME / "1" / "model.onnx"
    return {"repository": repository, "model": model, "onnx_mb": model.stat().st_size / 2**20,
            "build_and_import_s": time.perf_counter() - started}


def pixels(rows: int = 1) -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, 256, (rows, *SHAPE)).astype(np.float32)


# --- the service ------------------------------------------------------------------------------

def all_loaded(workers: int):
    """Every gunicorn worker and gRPC process has logged ResNet50 as loaded, and it answers."""
    def ready(url: str, log: Path) -> bool:
        text = log.read_text(errors="replace") if log.exists() else ""
        if text.count(f"model {NAME} version 1 loaded") < 2 * workers or \
                text.count("gRPC serving on") < workers:
            return False
        try:
            with urllib.request.urlopen(f"{url}/v2/models/{NAME}/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False
    return ready


def served_answer(url: str) -> np.ndarray:
    x = pixels()
    body = json.dumps({"inputs": [{"name": "input_layer", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    request = urllib.request.Request(f"{url}/v2/models/{NAME}/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        output = json.loads(answer.read())["outputs"][0]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def grpc_answer(address: str) -> None:
    """One ResNet50 inference over gRPC on a fresh channel (any gRPC process)."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(address, channel_args=[("grpc.use_local_subchannel_pool", 1)])
    try:
        image = triton.InferInput("input_layer", [1, *SHAPE], "FP32")
        image.set_data_from_numpy(pixels())
        client.infer(NAME, [image], client_timeout=30)
    finally:
        client.close()


def warm(server: Server, grpc_address: str, seconds: float = 90) -> None:
    """ResNet50 requests over REST and gRPC until every worker and gRPC process has answered some
    (its CPU time grew): a mapped page counts once a process has touched it, so every process
    must have run the model before its memory means anything."""
    table = server.descendants()
    serving = server.gunicorn_workers() + [pid for pid, (_, command) in table.items()
                                           if "service.grpc.server" in command]
    before = {pid: cpu_seconds([pid]) for pid in serving}
    deadline = time.monotonic() + seconds
    with ThreadPoolExecutor(max_workers=2 * len(serving)) as pool:
        while any(cpu_seconds([pid]) - before[pid] < WARM_CPU_SECONDS for pid in serving):
            if time.monotonic() > deadline:
                raise BenchFailure("some serving processes got no ResNet50 request")
            calls = [pool.submit(served_answer, server.url) for _ in serving]
            calls += [pool.submit(grpc_answer, grpc_address) for _ in serving]
            for call in calls:
                call.result()
    server.settle()


def measure(server: Server, workers: int) -> dict:
    """Total PSS and RSS of every process of the service (the launcher, nginx, gunicorn's master
    and workers, the gRPC processes), and by kind."""
    table = server.descendants()
    figures = {entry["pid"]: entry for entry in memory(sorted(table))}
    grpc = {pid for pid, (_, command) in table.items() if "service.grpc.server" in command}
    kinds = {"gunicorn workers": set(server.gunicorn_workers()), "gRPC processes": grpc}
    result = {"workers": workers, "processes": len(figures),
              "total_pss_mb": sum(entry["pss_mb"] for entry in figures.values()),
              "total_rss_mb": sum(entry["rss_mb"] for entry in figures.values())}
    for kind, pids in kinds.items():
        result[f"{kind} pss_mb"] = [round(figures[pid]["pss_mb"], 1)
                                    for pid in sorted(pids) if pid in figures]
    return result


def start(repository: Path, workers: int, cache: str, folder: Path, check: Path | None = None) -> dict:
    """One start of the service: seconds to every process serving ResNet50, then its memory."""
    environment = {"SERVING_MODEL_REPOSITORY": str(repository), "SERVING_WORKERS": str(workers),
                   "SERVING_MODEL_CACHE": cache, "SERVING_POLL_INTERVAL": "0", "SERVING_LOG_LEVEL": "info",
                   "SERVING_GRPC_BIND": f"127.0.0.1:{free_port()}"}
    started = time.monotonic()
    with front_door(environment, folder / "service.log", ready=all_loaded(workers)) as server:
        loaded_s = time.monotonic() - started  # includes settling: idle processes
        if check is not None:
            import onnxruntime

            expected = onnxruntime.InferenceSession(str(check), providers=["CPUExecutionProvider"]).run(
                None, {"input_layer": pixels()})[0]
            got = served_answer(server.url)
            if np.max(np.abs(got - expected)) > TOLERANCE * max(1.0, float(np.max(np.abs(expected)))):
                raise BenchFailure(f"ResNet50 served through the cache differs from onnxruntime by "
                                   f"{np.max(np.abs(got - expected))}")
        warm(server, environment["SERVING_GRPC_BIND"])
        figures = measure(server, workers)
    figures["ready_s"] = loaded_s
    return figures


def service(model: dict, folder: Path, rounds: int, log=print) -> dict:
    """Rounds of: (off, on) x (2, 6 workers) memory, and ResNet50's load time at 6 workers off,
    with an empty cache and with a warm one."""
    runs: dict[str, list[dict]] = {}
    for number in range(rounds):
        cache = folder / f"cache-{number}"
        for label, workers, setting, check in (
                ("off, 6 workers", 6, "off", None),
                ("on, 6 workers, empty cache", 6, str(cache), model["model"] if number == 0 else None),
                ("on, 6 workers", 6, str(cache), None),
                ("off, 2 workers", 2, "off", None),
                ("on, 2 workers", 2, str(cache), None)):
            figures = start(model["repository"], workers, setting, folder, check)
            runs.setdefault(label, []).append(figures)
            log(f"  round {number + 1}: {label}: {figures['total_pss_mb']:.0f} MB PSS in "
                f"{figures['processes']} processes, ready in {figures['ready_s']:.1f} s")
        shutil.rmtree(cache, ignore_errors=True)
    medians = {label: {"total_pss_mb": statistics.median(r["total_pss_mb"] for r in found),
                       "total_rss_mb": statistics.median(r["total_rss_mb"] for r in found),
                       "ready_s": statistics.median(r["ready_s"] for r in found),
                       "processes": found[0]["processes"], "last": found[-1]}
               for label, found in runs.items()}
    for mode in ("off", "on"):
        six, two = medians[f"{mode}, 6 workers"], medians[f"{mode}, 2 workers"]
        extra = (six["total_pss_mb"] - two["total_pss_mb"]) / 8
        medians[f"{mode}: MB per extra process"] = extra
    return medians


# --- roads: bare processes holding one model ---------------------------------------------------

HOLDER = r"""
import os, sys, time, statistics
import numpy as np, onnxruntime
from pathlib import Path
road, source, cache, count, prepack = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), \
    sys.argv[5]
data = source.read_bytes()
def options(level=None):
    o = onnxruntime.SessionOptions()
    o.intra_op_num_threads = o.inter_op_num_threads = 1
    o.log_severity_level = 3
    if level is not None:
        o.graph_optimization_level = level
    if prepack == "off":
        o.add_session_config_entry("session.disable_prepacking", "1")
    return o
def load():
    if road == "cache":
        import hashlib
        from service.repository.optimised_cache import ModelCache, MODEL
        digest = hashlib.sha256(data).hexdigest()
        entry = ModelCache(Path(cache)).entry(digest)
        built = ModelCache(Path(cache)).session(data, digest, (1, 1))  # built once, verified
        if prepack == "on":
            return built
        del built
        level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        return onnxruntime.InferenceSession(str(entry / MODEL), options(level))
    return onnxruntime.InferenceSession(data, options())
session = load()
spec = session.get_inputs()[0]
shape = [8 if not isinstance(d, int) else d for d in spec.shape]
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
def timing():
    session.run(None, {spec.name: x})
    times = []
    for _ in range(20):
        t = time.perf_counter(); session.run(None, {spec.name: x}); times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000
del data
session.run(None, {spec.name: x})
if road == "fork":
    for _ in range(count - 1):
        if os.fork() == 0:
            os.write(1, b"ready\n")  # one write: the children share the pipe
            parent = os.getppid()
            while os.getppid() == parent:  # until the parent exits
                time.sleep(0.2)
            os._exit(0)
os.write(1, b"ready\n")
if sys.stdin.readline().strip() == "time":  # one process at a time is timed, the others idle
    print(f"{timing():.2f}", flush=True)
    sys.stdin.read()
"""


def road(kind: str, model: Path, cache: Path, count: int, prepack: str = "on") -> dict:
    """`count` processes holding the model one way: their total PSS and ms per batch-8 inference."""
    command = [sys.executable, "-c", HOLDER, kind, str(model), str(cache), str(count), prepack]
    started = [subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for _ in range(1 if kind == "fork" else count)]
    try:
        lines = []
        for process in started:
            lines += [process.stdout.readline() for _ in range(count if kind == "fork" else 1)]
        if not all(line.startswith("ready") for line in lines):
            raise BenchFailure(f"road {kind} on {model.parent.name}: {lines}")
        time.sleep(0.5)
        started[0].stdin.write("time\n")
        started[0].stdin.flush()
        timed = float(started[0].stdout.readline())
        pids = [process.pid for process in started]
        if kind == "fork":
            pids += [int(pid) for pid in subprocess.run(["pgrep", "-P", str(started[0].pid)],
                                                         capture_output=True, text=True).stdout.split()]
        figures = memory(pids)
        return {"processes": len(figures), "total_pss_mb": sum(f["pss_mb"] for f in figures),
                "ms_per_batch_8": timed}
    finally:
        for process in started:
            with contextlib.suppress(OSError):
                process.stdin.close()
            process.wait(timeout=30)


def roads(models: dict[str, Path], folder: Path, count: int = ROAD_PROCESSES, log=print) -> dict:
    base = road("private", models["digits"], folder / "road-cache", 1)["total_pss_mb"]  # an interpreter alone
    results = {"interpreter_with_small_model_pss_mb": base}
    for name, model in models.items():
        for kind, prepack in (("private", "on"), ("cache", "on"), ("fork", "on"), ("cache", "off")):
            if prepack == "off" and name != "dense":
                continue
            figures = road(kind, model, folder / "road-cache", count, prepack)
            figures["pss_mb_per_process"] = figures["total_pss_mb"] / figures["processes"]
            label = f"{name}: {kind}" + (", prepacking off" if prepack == "off" else "")
            results[label] = figures
            log(f"  {label}: {figures['total_pss_mb']:.0f} MB PSS in {figures['processes']} processes, "
                f"{figures['ms_per_batch_8']:.2f} ms per batch of 8")
    return results


def dense_model(folder: Path) -> Path:
    import onnx

    from tests.onnx_models import dense_network

    path = folder / "dense.onnx"
    onnx.save(dense_network(), path)
    return path


# --- the run ------------------------------------------------------------------------------------

def run(folder: Path, rounds: int = ROUNDS, log=print) -> dict:
    started = time.monotonic()
    log("memory: building ResNet50 and importing it (python -m training import)")
    model = build_and_import(folder)
    log(f"  {model['onnx_mb']:.0f} MB of ONNX, {model['build_and_import_s']:.0f} s")
    log(f"memory: the service at {' and '.join(map(str, WORKERS))} workers, cache off and on, "
        f"{rounds} rounds")
    figures = {"service": service(model, folder, rounds, log), "onnx_mb": model["onnx_mb"]}
    log(f"memory: roads, {ROAD_PROCESSES} bare processes holding one model")
    figures["roads"] = roads({"resnet50": model["model"], "dense": dense_model(folder),
                              "digits": ROOT / "models" / "digits" / "1" / "model.onnx"}, folder, log=log)
    figures["elapsed_s"] = time.monotonic() - started
    return figures


def lines(figures: dict) -> list[str]:
    service = figures["service"]
    out = [f"Memory (built-in models + ResNet50, {figures['onnx_mb']:.0f} MB ONNX; total PSS of every "
           "process of python -m service, medians):",
           "                       2 workers   6 workers   per extra process   ResNet50 ready at 6 workers"]
    for mode in ("off", "on"):
        out.append(f"  cache {mode:<3}             {service[f'{mode}, 2 workers']['total_pss_mb']:7.0f} MB"
                   f"  {service[f'{mode}, 6 workers']['total_pss_mb']:7.0f} MB"
                   f"  {service[f'{mode}: MB per extra process']:10.0f} MB"
                   f"        {service[f'{mode}, 6 workers']['ready_s']:5.1f} s")
    out.append(f"  ResNet50 ready at 6 workers with an empty cache: "
               f"{service['on, 6 workers, empty cache']['ready_s']:.1f} s")
    out.append(f"Roads ({ROAD_PROCESSES} bare processes; MB PSS per process, ms per batch of 8):")
    for label, road_figures in figures["roads"].items():
        if isinstance(road_figures, dict):
            out.append(f"  {label:<34} {road_figures['pss_mb_per_process']:6.0f} MB"
                       f"  {road_figures['ms_per_batch_8']:8.2f} ms")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["build"]:
        build(Path(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--output", type=Path, default=BENCH / "results.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            figures = run(Path(scratch), args.rounds, log=lambda line: print(line, flush=True))
        except (BenchFailure, RuntimeError) as error:
            print(f"memory part failed: {error}", file=sys.stderr)
            return 1
    figures["measured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_part(args.output, KEY, figures)
    print("\n".join(lines(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
