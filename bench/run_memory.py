"""make bench, run-memory part: what the memory budget of a run (SERVING_RUN_MEMORY_MB,
service/repository/sessions.py) costs and what it does.

- Cost per run: two bare processes, budget off (0) and on (256 MB), each loading the same
  models the service's way (load_version through a model cache) and timing LoadedModel.infer:
  demand on one row, and a small convolutional network (tests/onnx_models.py, 128 channels, 3
  layers) on a batch of 8, whose runs take a few MB that the budget gives back after each run.
  Blocks of runs in rounds, off and on interleaved; the figure is the median of the per-round
  ratios on/off.
- What it does, in the same two processes: milliseconds to refuse demand's example row to a
  model whose Expand is sized by the input (tests/memory_hungry.py: 5.2 GB asked for; on only:
  off would take the memory), and the process's RSS before and after runs that take 102 MB.
- The same through `python -m service` (2 workers, 2 gRPC processes, budget 256 MB): the time to
  the 413 over REST and to RESOURCE_EXHAUSTED over gRPC (medians of 20), and every serving
  process's RSS before and after 8 runs of 102 MB each.

    python -m bench.run_memory    # or python -m bench.run --only-run-memory: about a minute;
                                  # writes the `run_memory` key of bench/results.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from bench.harness import BENCH, ROOT, free_port, front_door, memory, write_part

KEY = "run_memory"  # of bench/results.json
BUDGET_MB = 256
ROUNDS = 7
BLOCK = {"demand": 2000, "conv": 100}  # runs per timed block
HUGE = [19.99, 4.5, 2000.0, 7.0]  # demand's example row: 5.2 GB asked for by the hungry model
FITS = [10.0, 10.0, 10.0, 10.0]  # 102 MB
REFUSALS = 20


class BenchFailure(RuntimeError):
    """A process did not start, or answered wrongly."""


# A bare process holding the models the service's way; commands on stdin, one JSON line each out.
HOLDER = r"""
import json, statistics, sys, time
from pathlib import Path
import numpy as np
from service.repository import sessions
from service.repository.optimised_cache import ModelCache
from service.repository.version_folder import load_version
budget, repository, cache = int(sys.argv[1]), Path(sys.argv[2]), ModelCache(Path(sys.argv[3]))
sessions.register(budget)
models = {name: load_version(repository / name / "1", name, 1, (1, 1), cache)
          for name in ("demand", "conv", "hungry")}
feeds = {"demand": {"features": np.array([[19.99, 4.5, 2000, 7]], np.float32)},
         "conv": {"image": np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)}}
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
def hungry(row):
    started = time.perf_counter()
    try:
        models["hungry"].infer({"features": np.array([row], np.float32)}, ["probability"])
        refused = False
    except Exception as error:
        refused = sessions.over_budget(error, "hungry") is not None
    return {"ms": (time.perf_counter() - started) * 1000, "refused": refused, "rss_mb": rss()}
for name in feeds:
    for _ in range(200):
        models[name].infer(feeds[name], [models[name].card.output_names[0]])
print(json.dumps({"ready": True, "rss_mb": rss()}), flush=True)
for line in sys.stdin:
    command = json.loads(line)
    if command["do"] == "time":
        name, count = command["model"], command["count"]
        model, feed, wanted = models[name], feeds[name], [models[name].card.output_names[0]]
        started = time.perf_counter()
        for _ in range(count):
            model.infer(feed, wanted)
        print(json.dumps({"us": (time.perf_counter() - started) / count * 1e6}), flush=True)
    else:
        print(json.dumps(hungry(command["row"])), flush=True)
"""


def repository(folder: Path) -> Path:
    """demand (the built-in), conv and the hungry model, with their cards."""
    import shutil

    from tests.memory_hungry import expand_network
    from tests.onnx_models import conv_network, write_version

    models = folder / "models"
    shutil.copytree(ROOT / "models" / "demand", models / "demand")
    write_version(models, "conv", 1, conv_network(channels=128, layers=3))
    write_version(models, "hungry", 1, expand_network())
    return models


class Holder:
    def __init__(self, budget_mb: int, models: Path, cache: Path):
        command = [sys.executable, "-c", HOLDER, str(budget_mb), str(models), str(cache)]
        self.process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL,
                                        text=True)
        self.started = self.read()

    def read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise BenchFailure(f"a holder process ended ({self.process.wait()})")
        return json.loads(line)

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        self.process.wait(timeout=30)


def bare(folder: Path, rounds: int, log=print) -> dict:
    models, cache = repository(folder), folder / "cache"
    holders = {"off": Holder(0, models, cache), "on": Holder(BUDGET_MB, models, cache)}
    try:
        times = {(mode, name): [] for mode in holders for name in BLOCK}
        for number in range(rounds):
            modes = list(holders) if number % 2 == 0 else list(holders)[::-1]
            for name, count in BLOCK.items():
                for mode in modes:
                    times[mode, name].append(holders[mode].ask(do="time", model=name, count=count)["us"])
        figures = {}
        for name in BLOCK:
            off, on = times["off", name], times["on", name]
            figures[name] = {"off_us": statistics.median(off), "on_us": statistics.median(on),
                             "ratio": statistics.median(b / a for a, b in zip(off, on, strict=True)),
                             "rounds_off_us": off, "rounds_on_us": on}
            log(f"  {name}: {figures[name]['off_us']:.1f} us off, {figures[name]['on_us']:.1f} us on, "
                f"ratio {figures[name]['ratio']:.3f}")
        refusals = [holders["on"].ask(do="hungry", row=HUGE) for _ in range(REFUSALS)]
        if not all(refusal["refused"] for refusal in refusals):
            raise BenchFailure("a run over the budget was not refused")
        figures["refusal_ms"] = statistics.median(refusal["ms"] for refusal in refusals)
        for mode, holder in holders.items():
            before = holder.ask(do="hungry", row=[0.5, 0.25, 1.0, 0.25])["rss_mb"]
            after = [holder.ask(do="hungry", row=FITS) for _ in range(3)]
            figures[f"rss_{mode}"] = {"before_mb": before, "run_ms": [a["ms"] for a in after],
                                      "after_102mb_runs_mb": [a["rss_mb"] for a in after]}
            log(f"  RSS, budget {mode}: {before:.0f} MB before, after three 102 MB runs "
                + ", ".join(f"{a['rss_mb']:.0f}" for a in after) + " MB (each "
                + ", ".join(f"{a['ms']:.0f}" for a in after) + " ms)")
        log(f"  a 5.2 GB run refused in {figures['refusal_ms']:.2f} ms (median of {REFUSALS})")
        return figures
    finally:
        for holder in holders.values():
            holder.close()


def rest(url: str, row: list[float]) -> tuple[int, float]:
    body = json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                   "data": row}]}).encode()
    request = urllib.request.Request(f"{url}/v2/models/hungry/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            answer.read()
            status = answer.status
    except urllib.error.HTTPError as error:
        error.read()
        status = error.code
    return status, (time.perf_counter() - started) * 1000


def grpc(address: str, row: list[float]) -> tuple[str, float]:
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(address)
    try:
        features = triton.InferInput("features", [1, 4], "FP32")
        features.set_data_from_numpy(np.array([row], np.float32))
        started = time.perf_counter()
        try:
            client.infer("hungry", [features], client_timeout=60)
            status = "OK"
        except InferenceServerException as error:
            status = str(error.status())
        return status, (time.perf_counter() - started) * 1000
    finally:
        client.close()


def served(folder: Path, log=print) -> dict:
    models = repository(folder / "served")
    address = f"127.0.0.1:{free_port()}"
    environment = {"SERVING_MODEL_REPOSITORY": str(models), "SERVING_WORKERS": "2",
                   "SERVING_RUN_MEMORY_MB": str(BUDGET_MB), "SERVING_POLL_INTERVAL": "0",
                   "SERVING_MODEL_CACHE": str(folder / "served-cache"), "SERVING_GRPC_BIND": address}
    with front_door(environment, folder / "service.log", ready=_ready) as server:
        server.settle()
        table = server.descendants()
        serving = sorted(server.gunicorn_workers() + [pid for pid, (_, command) in table.items()
                                                      if "service.grpc.server" in command])
        for _ in range(8):
            rest(server.url, [0.5, 0.25, 1.0, 0.25])
            grpc(address, [0.5, 0.25, 1.0, 0.25])
        before = {f["pid"]: f["rss_mb"] for f in memory(serving)}
        rest_refusals = [rest(server.url, HUGE) for _ in range(REFUSALS)]
        grpc_refusals = [grpc(address, HUGE) for _ in range(REFUSALS)]
        if {status for status, _ in rest_refusals} != {413} or \
                {status for status, _ in grpc_refusals} != {"StatusCode.RESOURCE_EXHAUSTED"}:
            raise BenchFailure(f"refusals were {rest_refusals[:2]}, {grpc_refusals[:2]}")
        for _ in range(4):
            rest(server.url, FITS)
            grpc(address, FITS)
        after = {f["pid"]: f["rss_mb"] for f in memory(serving)}
        figures = {"rest_refusal_ms": statistics.median(ms for _, ms in rest_refusals),
                   "grpc_refusal_ms": statistics.median(ms for _, ms in grpc_refusals),
                   "rss_before_mb": list(before.values()), "rss_after_mb": [after[pid] for pid in before],
                   "processes_alive": all(pid in server.descendants() for pid in serving)}
    log(f"  served: 413 in {figures['rest_refusal_ms']:.1f} ms over REST, RESOURCE_EXHAUSTED in "
        f"{figures['grpc_refusal_ms']:.1f} ms over gRPC (medians of {REFUSALS}); RSS of the serving "
        f"processes before " + ", ".join(f"{v:.0f}" for v in figures["rss_before_mb"]) + " MB, after "
        "eight 102 MB runs " + ", ".join(f"{v:.0f}" for v in figures["rss_after_mb"]) + " MB")
    return figures


def _ready(url: str, log_file: Path) -> bool:
    """Both gRPC processes serving and the hungry model answering over REST."""
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    if text.count("gRPC serving on") < 2:
        return False
    try:
        return rest(url, [0.5, 0.25, 1.0, 0.25])[0] == 200
    except OSError:
        return False


def run(folder: Path, rounds: int = ROUNDS, log=print) -> dict:
    started = time.monotonic()
    log(f"run memory: budget off and {BUDGET_MB} MB, bare processes, {rounds} rounds")
    figures = {"budget_mb": BUDGET_MB, "bare": bare(folder, rounds, log)}
    log("run memory: python -m service, budget on")
    figures["served"] = served(folder, log)
    figures["elapsed_s"] = time.monotonic() - started
    return figures


def lines(figures: dict) -> list[str]:
    bare_figures, served_figures = figures["bare"], figures["served"]
    out = [f"Run memory (SERVING_RUN_MEMORY_MB={figures['budget_mb']} against 0; per-run cost, "
           "median of per-round ratios):"]
    for name, label in (("demand", "demand, 1 row"), ("conv", "conv network, batch 8")):
        found = bare_figures[name]
        out.append(f"  {label:<24} {found['off_us']:8.1f} us off {found['on_us']:8.1f} us on   "
                   f"ratio {found['ratio']:.3f}")
    out.append(f"  5.2 GB run refused in {bare_figures['refusal_ms']:.2f} ms in-process; served: 413 in "
               f"{served_figures['rest_refusal_ms']:.1f} ms (REST), RESOURCE_EXHAUSTED in "
               f"{served_figures['grpc_refusal_ms']:.1f} ms (gRPC)")
    for mode in ("off", "on"):
        found = bare_figures[f"rss_{mode}"]
        out.append(f"  RSS budget {mode:<3} {found['before_mb']:4.0f} MB before, after 102 MB runs "
                   + ", ".join(f"{v:.0f}" for v in found["after_102mb_runs_mb"]) + " MB (each run "
                   + ", ".join(f"{v:.0f}" for v in found["run_ms"]) + " ms)")
    out.append("  served, RSS per serving process before / after eight 102 MB runs: "
               + ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(served_figures["rss_before_mb"],
                                                               served_figures["rss_after_mb"], strict=True))
               + " MB")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--output", type=Path, default=BENCH / "results.json")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            figures = run(Path(scratch), args.rounds, log=lambda line: print(line, flush=True))
        except (BenchFailure, RuntimeError) as error:
            print(f"run-memory part failed: {error}", file=sys.stderr)
            return 1
    figures["measured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_part(args.output, KEY, figures)
    print("\n".join(lines(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
