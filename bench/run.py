"""make bench: the service as users run it against a bare Flask baseline and a raw-WSGI ceiling.

The service runs as `make serve` runs it, `python -m service`: nginx (the front door) on a
loopback port in front of gunicorn on a unix socket, 2 sync workers, with its validation,
metrics and JSON access log on. The baseline, bench/baseline_app.py, is the ten-line service
people write (Flask, the standard library's JSON, onnxruntime) on bare gunicorn with 2 sync
workers. The ceiling, bench/ceiling_app.py, is a WSGI callable that answers a fixed JSON: on
the same gunicorn, bare and behind the same front door, it is what the stack allows at best.
The service without its front door (gunicorn alone, the same configuration) shows what nginx
costs.

The headline scenarios run in rounds (--rounds, default 5): within a round every server is
driven by wrk for a few seconds in turn, the order reversed every other round, so that all of
them see the same machine; the table shows the medians of the rounds, and every ratio is the
median of the per-round ratios (the ratio of the medians is printed beside it with the rounds).
The other scenarios are single runs. Then an imported convolutional network (MobileNetV3Small,
96x96x3, batch 32) served the same way against its own onnxruntime floor (bench/image.py).
Then the overload part (bench/overload.py): REST and gRPC at 1x, 4x, 16x and 64x the concurrency
that saturates them, and gRPC's 1,024 calls with a 200 ms deadline, with the issue's targets.
Last, the memory part (bench/memory.py): the total PSS of every process of the service at 2 and
6 workers with the model cache off and on, with an imported ResNet50; then what the memory
budget of a run costs and does (bench/run_memory.py).
Then the request path's part (bench/request_path.py: what each feature on the request path costs,
on against off, in process) and the runaway part (bench/runaway.py: demand's latency while a
runaway model is asked at once over REST and gRPC).
Prints one table and writes bench/results.json and bench/results.png. About sixteen minutes on
2 cores; `--only-image` (`--only-memory`, `--only-overload`) runs the image (memory, overload) part
alone and updates its key of results.json (image_model, models_in_memory, overload).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime

from bench import grpc as grpc_part
from bench import image, request_path, runaway
from bench import memory as memory_part
from bench import overload as overload_part
from bench import run_memory as run_memory_part
from bench.harness import (
    ROOT,
    Server,
    behind_front_door,
    front_door,
    gunicorn,
    medians,
    others_busy,
    warm_up,
    write_part,
    wrk,
)

BENCH = ROOT / "bench"
MODELS = ROOT / "models"
WORKERS = 2  # the baseline's and the ceiling's sync workers, and the service's by default

SERVERS = {
    "service": "service (python -m service)",
    "service_direct": "service without front door",
    "service_budget_off": "service, queue budget off",
    "baseline": "baseline (bare Flask, json)",
    "ceiling_front": "ceiling: raw WSGI, front door",
    "ceiling_bare": "ceiling: raw WSGI, bare gunicorn",
}
LABEL = 36  # width of a server's name in the table
# The ceiling each server is compared with: the same stack with a WSGI app that does nothing.
CEILING_OF = {"service": "ceiling_front", "service_direct": "ceiling_bare"}

# Headline scenarios, measured in rounds. The baseline speaks JSON only: a binary scenario
# compares with the baseline's figures of another scenario (`baseline`), measured in the same round.
HEADLINE = [
    {"key": "single", "label": "v2 JSON, 1 row, c=8", "kind": "v2", "rows": 1, "c": 8,
     "layout": "nested", "servers": ["baseline", "service", "service_direct", "ceiling_front",
                                     "ceiling_bare", "service_budget_off"]},
    {"key": "nested", "label": "v2 JSON, 256 rows nested, c=4", "kind": "v2", "rows": 256, "c": 4,
     "layout": "nested", "servers": ["baseline", "service"]},
    {"key": "binary", "label": "v2 binary, 256 rows, c=4", "kind": "v2b", "rows": 256, "c": 4,
     "servers": ["service"], "baseline": "nested"},
    {"key": "flat", "label": "v2 JSON, 256 rows flat, c=4", "kind": "v2", "rows": 256, "c": 4,
     "layout": "flat", "servers": ["baseline", "service"]},
]
# Within a round, the scenarios of a group run back to back, their servers alternating.
GROUPS = [["single"], ["nested", "binary"], ["flat"]]
# Single runs, after the rounds.
OTHERS = [
    {"key": "c1", "label": "v2 JSON, 1 row, c=1", "kind": "v2", "rows": 1, "c": 1,
     "servers": ["baseline", "service"]},
    {"key": "tf1", "label": "TF :predict, 1 row, c=8", "kind": "tf", "rows": 1, "c": 8,
     "servers": ["service"], "baseline": "single"},
    {"key": "c32", "label": "v2 JSON, 1 row, c=32", "kind": "v2", "rows": 1, "c": 32,
     "servers": ["baseline", "service"]},
    {"key": "nested_direct", "label": "v2 JSON, 256 rows nested, c=4", "kind": "v2", "rows": 256,
     "c": 4, "servers": ["service_direct"], "baseline": "nested"},
    {"key": "nested1024", "label": "v2 JSON, 1024 rows nested, c=4", "kind": "v2", "rows": 1024,
     "c": 4, "servers": ["baseline", "service"]},
    {"key": "binary1024", "label": "v2 binary, 1024 rows, c=4", "kind": "v2b", "rows": 1024, "c": 4,
     "servers": ["service"], "baseline": "nested1024"},
    {"key": "random", "label": "v2 JSON, 256 random floats nested, c=4", "kind": "v2", "rows": 256,
     "c": 4, "data": "random", "servers": ["baseline", "service"]},
]
# The targets: (scenario, server, figure, comparison, limit), against the baseline.
TARGETS = [
    ("single", "service", "requests/s", ">=", 1.0),
    ("single", "service", "p99", "<=", 1.1),
    ("nested", "service", "rows/s", ">=", 2.5),
    ("flat", "service", "rows/s", ">=", 2.5),
]


# --- the floor: onnxruntime in-process --------------------------------------------------------

def floor_us(model_path: Path, rows: int, repeats: int = 7) -> float:
    """Median µs per session.run call, one thread, as each service worker runs it."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model_path), options,
                                           providers=["CPUExecutionProvider"])
    name, width = session.get_inputs()[0].name, session.get_inputs()[0].shape[1]
    x = np.random.default_rng(0).uniform(0, 16, (rows, width)).astype(np.float32)
    calls = max(20, 20000 // rows)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            session.run(None, {name: x})
        timings.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(timings)


# --- request bodies ---------------------------------------------------------------------------

def digits_rows(count: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    images = load_digits().data.astype(np.float32)
    return np.resize(images, (count, 64))


def random_rows(count: int) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 16, (count, 64)).astype(np.float32)


def v2_json(x: np.ndarray, layout: str = "nested") -> bytes:
    """Nested row lists (`[[64 values], ...]`, as hand-written clients send) or flat data
    (`[all values]`, row-major, as tritonclient sends)."""
    data = x.ravel().tolist() if layout == "flat" else x.tolist()
    return json.dumps({"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                                   "data": data}]}).encode()


def v2_binary(x: np.ndarray) -> tuple[bytes, int]:
    blob = x.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + blob, len(header)


def tf_predict(x: np.ndarray) -> bytes:
    return json.dumps({"instances": x.tolist()}).encode()


@functools.cache
def body_file(folder: Path, kind: str, rows: int, data: str = "digits",
              layout: str = "nested") -> tuple[Path, int | None]:
    """A request body in a file, for wrk (written once per folder), and its JSON header's length
    for a v2 binary request."""
    x = (digits_rows if data == "digits" else random_rows)(rows)
    header_length = None
    if kind == "v2":
        payload = v2_json(x, layout)
    elif kind == "v2b":
        payload, header_length = v2_binary(x)
    else:
        payload = tf_predict(x)
    path = folder / f"{kind}-{rows}-{data}-{layout}.body"
    path.write_bytes(payload)
    return path, header_length


def path_for(kind: str) -> str:
    return "/v1/models/digits:predict" if kind == "tf" else "/v2/models/digits/infer"


# --- measuring --------------------------------------------------------------------------------

def drive(servers: dict[str, Server], scenario: dict, server: str, folder: Path, seconds: int) -> dict:
    body, header_length = body_file(folder, scenario["kind"], scenario["rows"],
                                    scenario.get("data", "digits"), scenario.get("layout", "nested"))
    return wrk(servers[server].url + path_for(scenario["kind"]), body, header_length, scenario["c"],
               seconds, servers[server])


def summarise(scenario: dict) -> None:
    """Medians of each server's rounds: requests/s, rows/s, p50, p99, CPU per request."""
    scenario["figures"] = {}
    for server, rounds in scenario["rounds"].items():
        scenario["figures"][server] = {
            **medians(rounds, scenario["rows"]),
            # What the server's processes spend on a request (gunicorn's workers and nginx, not
            # wrk): the figure that sets its capacity on cores of its own.
            "server_cpu_us_per_request": statistics.median(
                r["cpu_us_per_request"]["workers"] + r["cpu_us_per_request"].get("nginx", 0.0)
                for r in rounds),
        }


def ratio(mine: list[dict], theirs: list[dict]) -> dict:
    """requests/s and p99 of mine over theirs: per round, their median, and the ratio of medians."""
    def of(key: str) -> dict:
        per_round = [a[key] / b[key] for a, b in zip(mine, theirs, strict=True)]
        return {"per_round": per_round, "median_of_rounds": statistics.median(per_round),
                "of_medians": statistics.median(a[key] for a in mine)
                / statistics.median(b[key] for b in theirs)}
    return {"requests_per_s": of("requests_per_s"), "p99": of("p99_us")}


def compare(scenario: dict, by_key: dict[str, dict]) -> None:
    """Each server against the baseline (of this scenario, or of the one named) and its ceiling."""
    reference = by_key[scenario.get("baseline", scenario["key"])]
    scenario["ratios"] = {}
    base = reference["rounds"].get("baseline")
    for server, rounds in scenario["rounds"].items():
        if server == "baseline":
            continue
        if base is not None:
            theirs = base if len(base) == len(rounds) else [reference["figures"]["baseline"]] * len(rounds)
            scenario["ratios"][f"{server}/baseline"] = ratio(rounds, theirs)
        ceiling = CEILING_OF.get(server)
        if ceiling in scenario["rounds"]:
            scenario["ratios"][f"{server}/{ceiling}"] = ratio(rounds, scenario["rounds"][ceiling])
        if server == "service" and "service_budget_off" in scenario["rounds"]:  # what the budget costs
            off = scenario["rounds"]["service_budget_off"]
            scenario["ratios"]["service/service_budget_off"] = ratio(rounds, off)


def run_rounds(servers: dict[str, Server], folder: Path, rounds: int, seconds: int) -> list[dict]:
    plan = [dict(s, rounds={server: [] for server in s["servers"]}) for s in HEADLINE]
    by_key = {s["key"]: s for s in plan}
    for group in GROUPS:  # warm-up: one run of each, not counted
        for key in group:
            for server in by_key[key]["servers"]:
                drive(servers, by_key[key], server, folder, 1)
    for number in range(rounds):
        for group in GROUPS:
            runs = [(key, server) for key in group for server in by_key[key]["servers"]]
            for key, server in runs if number % 2 == 0 else runs[::-1]:
                by_key[key]["rounds"][server].append(drive(servers, by_key[key], server, folder, seconds))
        figures = []
        for key in by_key:
            for server, results in by_key[key]["rounds"].items():
                figures.append(f"{key} {server} {results[-1]['requests_per_s']:.0f}")
        others = max(r["machine"]["other_share"] for s in plan for rounds in s["rounds"].values()
                     for r in rounds[-1:])
        print(f"  round {number + 1}: " + ", ".join(figures) + f" req/s (other processes: up to "
              f"{100 * others:.0f}% of the CPU)", flush=True)
    for scenario in plan:
        summarise(scenario)
    for scenario in plan:
        compare(scenario, by_key)
    return plan


def run_others(servers: dict[str, Server], folder: Path, seconds: int, headline: list[dict]) -> list[dict]:
    plan = [dict(s, rounds={server: [] for server in s["servers"]}) for s in OTHERS]
    by_key = {s["key"]: s for s in headline + plan}
    for scenario in plan:
        for server in scenario["servers"]:
            scenario["rounds"][server].append(drive(servers, scenario, server, folder, seconds))
        summarise(scenario)
        compare(scenario, by_key)
        service = next(s for s in scenario["servers"] if s != "baseline")
        base = scenario["ratios"].get(f"{service}/baseline")
        print(f"  {scenario['label']:<40} {SERVERS[service].split(' (')[0]:<26}"
              f"{scenario['figures'][service]['rows_per_s']:>10.0f} rows/s"
              + (f"  x{base['requests_per_s']['median_of_rounds']:.2f} of baseline" if base else ""),
              flush=True)
    return plan


@contextlib.contextmanager
def all_servers(folder: Path, service_env: dict):
    """Every server at once (idle ones cost nothing): the service with and without its front
    door, the baseline, and the ceiling bare and behind the front door."""
    service_config = ["--config", "service/process/gunicorn.conf.py"]
    bare = ["--workers", str(WORKERS)]
    with contextlib.ExitStack() as stack:
        servers = {
            "service": stack.enter_context(front_door(service_env, folder / "service.log")),
            "service_direct": stack.enter_context(gunicorn(service_config, service_env,
                                                           folder / "service-direct.log")),
            "baseline": stack.enter_context(gunicorn([*bare, "bench.baseline_app:app"], {},
                                                     folder / "baseline.log")),
            "ceiling_front": stack.enter_context(behind_front_door([*bare, "bench.ceiling_app:app"], {},
                                                                   folder / "ceiling-front.log")),
            "ceiling_bare": stack.enter_context(gunicorn([*bare, "bench.ceiling_app:app"], {},
                                                         folder / "ceiling-bare.log")),
            # The queue budget's cost (docs/reliability.md): the same service with it off.
            "service_budget_off": stack.enter_context(front_door(
                {**service_env, "SERVING_QUEUE_BUDGET_MS": "0"}, folder / "service-budget-off.log")),
        }
        yield servers


# --- report -----------------------------------------------------------------------------------

def floor_rows_per_s(floor: dict, rows: int, workers: int) -> float:
    us = floor[str(rows)] if str(rows) in floor else floor["256"] * rows / 256
    return workers * rows / us * 1e6


def scenario_lines(scenario: dict, floor: dict, workers: int) -> list[str]:
    lines = [scenario["label"]]
    if "baseline" not in scenario["servers"] and scenario.get("baseline"):
        lines[0] += f"  (x base: against the baseline's {scenario['baseline_label']})"
    for server in scenario["servers"]:
        figures = scenario["figures"][server]
        base = scenario["ratios"].get(f"{server}/baseline")
        ceiling = scenario["ratios"].get(f"{server}/{CEILING_OF.get(server)}")
        x_base = f"{base['requests_per_s']['median_of_rounds']:.2f}" if base else ""
        p99_base = f"{base['p99']['median_of_rounds']:.2f}" if base else ""
        x_ceiling = f"{ceiling['requests_per_s']['median_of_rounds']:.2f}" if ceiling else ""
        share = ""
        if server.startswith("service"):
            share = f"{100 * figures['rows_per_s'] / floor_rows_per_s(floor, scenario['rows'], workers):.1f}%"
        lines.append(f"  {SERVERS[server]:<{LABEL}}{figures['rows_per_s']:>10.0f}"
                     f"{figures['requests_per_s']:>9.0f}{figures['p50_us'] / 1000:>8.2f}"
                     f"{figures['p99_us'] / 1000:>8.2f}{figures['server_cpu_us_per_request']:>8.0f}"
                     f"{x_base:>8}{p99_base:>11}{x_ceiling:>8}{share:>9}")
    return lines


def target_lines(results: dict) -> list[str]:
    by_key = {s["key"]: s for s in results["headline"]}
    lines = []
    for key, server, figure, comparison, limit in TARGETS:
        measured = by_key[key]["ratios"][f"{server}/baseline"]["p99" if figure == "p99" else "requests_per_s"]
        value = measured["median_of_rounds"]
        met = value >= limit if comparison == ">=" else value <= limit
        lines.append(f"  {by_key[key]['label']:<32} {figure:<10} {value:5.2f}x the baseline "
                     f"(ratio of medians {measured['of_medians']:.2f}; target {comparison} {limit}): "
                     f"{'meets' if met else 'MISSES'}")
    budget = by_key["single"]["ratios"].get("service/service_budget_off")
    if budget:  # the queue budget's cost on the hot path: its req/s and p99 as ratios to it off
        lines.append(f"  {by_key['single']['label']:<32} queue budget on / off: requests/s "
                     f"{budget['requests_per_s']['median_of_rounds']:.2f}x, p99 "
                     f"{budget['p99']['median_of_rounds']:.2f}x")
    return lines


def round_lines(results: dict) -> list[str]:
    lines = []
    for scenario in results["headline"]:
        count = len(next(iter(scenario["rounds"].values())))
        lines.append(f"{scenario['label']:<{LABEL + 2}}"
                     + "".join(f"{'round ' + str(n + 1):>16}" for n in range(count)) + f"{'median':>16}")
        for server in scenario["servers"]:
            rounds = scenario["rounds"][server]
            cells = [f"{r['requests_per_s']:.0f} / {r['p99_us'] / 1000:.2f}" for r in rounds]
            figures = scenario["figures"][server]
            cells.append(f"{figures['requests_per_s']:.0f} / {figures['p99_us'] / 1000:.2f}")
            lines.append(f"  {SERVERS[server]:<{LABEL}}" + "".join(f"{c:>16}" for c in cells))
        for name, measured in scenario["ratios"].items():
            mine, theirs = name.split("/")
            cells = [f"{a:.2f} / {b:.2f}" for a, b in zip(measured["requests_per_s"]["per_round"],
                                                          measured["p99"]["per_round"], strict=True)]
            cells.append(f"{measured['requests_per_s']['median_of_rounds']:.2f} / "
                         f"{measured['p99']['median_of_rounds']:.2f}")
            lines.append(f"  {'x ' + theirs.replace('_', ' ') + ': ' + mine.replace('_', ' '):<{LABEL}}"
                         + "".join(f"{c:>16}" for c in cells)
                         + f"   (ratio of medians {measured['requests_per_s']['of_medians']:.2f} / "
                         f"{measured['p99']['of_medians']:.2f})")
    return lines


def cpu_lines(results: dict) -> list[str]:
    single = next(s for s in results["headline"] if s["key"] == "single")
    lines = []
    for server in single["servers"]:
        cpu = single["figures"][server]["cpu_us_per_request"]
        parts = [f"gunicorn workers {cpu['workers']:.0f}"]
        if "nginx" in cpu:
            parts.append(f"nginx {cpu['nginx']:.0f}")
        parts.append(f"wrk {cpu['wrk']:.0f}")
        lines.append(f"  {SERVERS[server]:<{LABEL}}" + ", ".join(parts)
                     + f"; total {sum(cpu.values()):.0f}")
    server_cpu = {name: figures["server_cpu_us_per_request"] for name, figures in single["figures"].items()}
    lines.append(f"  capacity on cores of its own (the baseline's server CPU per request over the service's) "
                 f"{server_cpu['baseline'] / server_cpu['service']:.2f}x; without front door "
                 f"{server_cpu['baseline'] / server_cpu['service_direct']:.2f}x")
    return lines


def table(results: dict) -> str:
    floor = results["floor_us"]["digits"]
    workers = results["settings"]["workers"]
    settings = results["settings"]
    header = (f"{'':<{LABEL + 2}}{'rows/s':>10}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'CPU µs':>8}"
              f"{'x base':>8}{'p99 x base':>11}{'x ceil':>8}{'% floor':>9}")
    lines = [
        "onnxruntime floor, µs per call (1 thread): " + ", ".join(
            f"{name} {f['1']:.1f} (1 row) / {f['256']:.1f} (256 rows)"
            for name, f in results["floor_us"].items()),
        "",
        f"headline: medians of {settings['rounds']} rounds of {settings['seconds_per_run']} s, the servers "
        "alternating within each round (order reversed every other round)",
        "x base, p99 x base, x ceil: medians of the per-round ratios to the baseline and to the raw-WSGI "
        "ceiling on the same stack",
        "CPU µs: the server's processes (gunicorn's workers, nginx; not wrk) per request; "
        "% floor: of 2 workers running onnxruntime alone",
        header,
    ]
    for scenario in results["headline"]:
        lines += scenario_lines(scenario, floor, workers)
    if results["others"]:
        lines += ["", f"other scenarios: single runs of {settings['seconds_per_run']} s", header]
        for scenario in results["others"]:
            lines += scenario_lines(scenario, floor, workers)
    lines += ["", "targets (medians of the per-round ratios):", *target_lines(results)]
    lines += ["", "per round: requests/s / p99 ms, then the ratios (requests/s / p99)", *round_lines(results)]
    lines += ["", "CPU µs per single-row request (v2 JSON, c=8), medians of the rounds:", *cpu_lines(results)]
    shares = [r["machine"]["other_share"] for s in results["headline"] for rounds in s["rounds"].values()
              for r in rounds]
    lines += ["", f"other processes: {100 * results['machine']['busy_before']:.0f}% of the machine's CPU "
              f"before the bench; during the headline runs median {100 * statistics.median(shares):.0f}%, "
              f"largest {100 * max(shares):.0f}% (CPU not used by the server measured nor by wrk)"]
    memory = results["memory"]
    lines += ["", "service's gunicorn workers, memory (MB): " + "; ".join(
        f"after {m['requests']:,} requests RSS {m['rss_mb']:.1f} PSS {m['pss_mb']:.1f}"
        for m in memory["samples"]) + f"; growth {memory['growth_percent']:+.1f}%"]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(kind, results[kind]) for kind in ("headline", "others", "image_model") if results.get(kind)]
    if not panels:
        return
    widths = {"headline": 3, "others": 3, "image_model": 2}
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 2, 5.5), squeeze=False,
                                gridspec_kw={"width_ratios": [widths[kind] for kind, _ in panels]})
    for axis, (kind, figures) in zip(axes[0], panels, strict=True):
        if kind == "image_model":
            plot_image(axis, figures)
        else:
            plot_scenarios(axis, figures, kind == "headline", results.get("settings", {}).get("rounds"))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_scenarios(axis, scenarios: list[dict], headline: bool, rounds: int | None) -> None:
    colours = {"service": "C0", "service_direct": "C9", "baseline": "C1", "ceiling_front": "C7",
               "ceiling_bare": "0.8", "service_budget_off": "C2"}
    width = 0.16
    for index, scenario in enumerate(scenarios):
        present = scenario["servers"]
        for offset, server in enumerate(present):
            x = index + (offset - (len(present) - 1) / 2) * width
            value = scenario["figures"][server]["rows_per_s"]
            axis.bar(x, value, width, color=colours[server])
            base = scenario["ratios"].get(f"{server}/baseline")
            if server == "service" and base:
                axis.annotate(f"{base['requests_per_s']['median_of_rounds']:.2f}x", (x, value), ha="center",
                              va="bottom", fontsize=7)
            if headline:  # every round as a dot
                axis.plot([x] * len(scenario["rounds"][server]),
                          [r["requests_per_s"] * scenario["rows"] for r in scenario["rounds"][server]],
                          ".", color="black", markersize=3)
    for server, colour in colours.items():
        axis.bar(0, 0, 0, color=colour, label=SERVERS[server])
    axis.set_yscale("log")
    axis.set_ylabel("rows per second (log)")
    axis.set_xticks(range(len(scenarios)), [s["label"].replace(", ", "\n", 1) for s in scenarios],
                    fontsize=7, rotation=30 if not headline else 0, ha="right" if not headline else "center")
    if headline:
        axis.legend(fontsize=7, loc="upper left")
        axis.set_title(f"digits, headline: medians of {rounds} rounds (dots: each round)", fontsize=9)
    else:
        axis.set_title("digits, other scenarios (single runs)", fontsize=9)


def plot_image(axis, figures: dict) -> None:
    floor = figures["floor"]
    bars = [(f"floor (a)\n1 process\n{floor['a_one_process_threads']} threads", floor["a_rows_per_s"], "C2"),
            (f"floor (b)\n{floor['b_processes']} processes\n1 thread", floor["b_rows_per_s"], "C2"),
            (f"service\nv2 binary\nc={figures['connections']}", figures["binary"]["rows_per_s"], "C0"),
            (f"service\nv2 JSON\nc={figures['connections']}", figures["json"]["rows_per_s"], "C0")]
    positions = np.arange(len(bars))
    axis.bar(positions, [b[1] for b in bars], 0.6, color=[b[2] for b in bars])
    axis.axhline(figures["target_ratio"] * floor["rows_per_s"], color="grey", linestyle="--", linewidth=1,
                 label=f"{figures['target_ratio']}x the floor")
    for x, (_, value, _) in zip(positions, bars, strict=True):
        axis.annotate(f"{value:,.0f}", (x, value), ha="center", va="bottom", fontsize=8)
    axis.set_xticks(positions, [b[0] for b in bars], fontsize=7)
    axis.set_ylabel("rows per second")
    axis.legend(fontsize=7, loc="upper right")
    axis.set_title(f"imported MobileNetV3Small 96x96x3, batch {figures['batch']}, python -m service",
                   fontsize=9)


# --- main -------------------------------------------------------------------------------------

def run_digits(args: argparse.Namespace) -> dict:
    """The digits part: the floor, then every server, the headline in rounds, the rest once."""
    started = time.monotonic()
    busy_before = others_busy()
    if busy_before > 0.1:
        print(f"  warning: other processes use {100 * busy_before:.0f}% of the machine's CPU; "
              "the figures will be noisy", flush=True)
    floor = {}
    for model in ("demand", "digits", "digits-binary"):
        path = MODELS / model / "1" / "model.onnx"
        floor[model] = {str(rows): floor_us(path, rows) for rows in (1, 256, 1024)}

    service_env = {"SERVING_WORKERS": str(args.workers)}
    if args.threads:
        service_env["SERVING_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as scratch, all_servers(Path(scratch), service_env) as servers:
        folder = Path(scratch)
        single_body = v2_json(digits_rows(1))
        samples = [{"requests": warm_up(servers["service"].url, single_body, 1000),
                    "workers": servers["service"].worker_memory()}]
        print(f"  servers up: service workers {servers['service'].gunicorn_workers()}, nginx "
              f"{servers['service'].nginx_processes()}; {args.rounds} rounds of {args.seconds} s", flush=True)
        headline = run_rounds(servers, folder, args.rounds, args.seconds)
        others = [] if args.quick else run_others(servers, folder, args.seconds, headline)
        served = samples[0]["requests"] + sum(
            r["requests"] for s in headline + others for r in s["rounds"].get("service", []))
        samples.append({"requests": served, "workers": servers["service"].worker_memory()})
        if len(samples[-1]["workers"]) != args.workers:
            raise RuntimeError(f"found {len(samples[-1]['workers'])} gunicorn workers of the service, "
                               f"expected {args.workers}")

    labels = {s["key"]: s["label"] for s in headline + others}
    for scenario in headline + others:
        if scenario.get("baseline"):
            scenario["baseline_label"] = labels[scenario["baseline"]]

    def mean_of(sample, key):
        return statistics.mean(w[key] for w in sample["workers"])

    memory = {"samples": [{"requests": s["requests"], "rss_mb": mean_of(s, "rss_mb"),
                           "pss_mb": mean_of(s, "pss_mb"), "workers": s["workers"]} for s in samples]}
    memory["growth_percent"] = 100 * (memory["samples"][-1]["rss_mb"] / memory["samples"][0]["rss_mb"] - 1)
    failures = sum(r["non_2xx"] + r["socket_errors"] for s in headline + others
                   for rounds in s["rounds"].values() for r in rounds)
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "onnxruntime": onnxruntime.__version__,
                    "busy_before": busy_before},
        "settings": {"rounds": args.rounds, "seconds_per_run": args.seconds, "workers": args.workers,
                     "threads": args.threads, "servers": SERVERS,
                     "service": "python -m service (nginx front door, gunicorn on a unix socket), "
                                "validation, metrics and JSON access log on",
                     "baseline": "bench/baseline_app.py, gunicorn 2 sync workers",
                     "ceiling": "bench/ceiling_app.py, gunicorn 2 sync workers, bare and behind the "
                                "service's nginx (service.process.nginx.render)",
                     "ratios": "x base and x ceil: medians of the per-round ratios; ratios of the "
                               "medians beside them (of_medians)"},
        "floor_us": floor,
        "headline": headline,
        "others": others,
        "memory": memory,
        "failed_requests": failures,
        "elapsed_s": time.monotonic() - started,
    }


def run_image(args: argparse.Namespace) -> dict:
    """The image part (bench/image.py), with a timestamp: --only-image updates it alone."""
    environment = dict(setting.split("=", 1) for setting in args.image_env)
    with tempfile.TemporaryDirectory() as scratch:
        figures = image.run(Path(scratch), rounds=args.image_rounds, seconds=args.image_seconds,
                            connections=args.image_connections, environment=environment,
                            log=lambda line: print(line, flush=True))
    figures["measured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    figures["machine"] = {"cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__}
    return figures


def run_memory() -> dict:
    """The memory part (bench/memory.py), with a timestamp."""
    with tempfile.TemporaryDirectory() as scratch:
        figures = memory_part.run(Path(scratch), log=lambda line: print(line, flush=True))
    figures["measured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return figures


def run_grpc(args: argparse.Namespace) -> dict:
    """The gRPC part (bench/grpc.py): gRPC by h2load beside REST by wrk, one python -m service."""
    environment = {"SERVING_WORKERS": str(args.workers), **dict(s.split("=", 1) for s in args.grpc_env)}
    with tempfile.TemporaryDirectory() as scratch:
        return grpc_part.run(Path(scratch), rounds=args.grpc_rounds, seconds=args.grpc_seconds,
                             environment=environment, log=lambda line: print(line, flush=True))


def run_overload(args: argparse.Namespace) -> dict:
    """The overload part (bench/overload.py): REST and gRPC past saturation, one python -m service."""
    environment = {"SERVING_WORKERS": str(args.workers), **dict(s.split("=", 1) for s in args.overload_env)}
    with tempfile.TemporaryDirectory() as scratch:
        return overload_part.run(Path(scratch), rounds=args.overload_rounds, seconds=args.overload_seconds,
                                 environment=environment, log=lambda line: print(line, flush=True))


def run_only_overload(args: argparse.Namespace) -> int:
    """--only-overload: the overload part alone, its key (overload) replaced in --output."""
    try:
        figures = run_overload(args)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
        print(f"overload part failed: {error}", file=sys.stderr)
        return 1
    write_part(args.output, overload_part.KEY, figures)
    print()
    print("\n".join(overload_part.lines(figures)))
    print(f"\n{figures['elapsed_s']:.0f} s; written {display(args.output)}")
    return 0


def run_only_grpc(args: argparse.Namespace) -> int:
    """--only-grpc: the gRPC part alone, its key (grpc) replaced in --output."""
    try:
        figures = run_grpc(args)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
        print(f"gRPC part failed: {error}", file=sys.stderr)
        return 1
    write_part(args.output, "grpc", figures)
    print()
    print("\n".join(grpc_part.lines(figures)))
    failures = figures["failed_requests"]
    print(f"\nfailed requests: {failures}; {figures['elapsed_s']:.0f} s; "
          f"written {display(args.output)}")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the headline scenarios (default 5)")
    parser.add_argument("--seconds", type=int, default=3, help="per wrk run (default 3)")
    parser.add_argument("--workers", type=int, default=WORKERS, help="the service's gunicorn workers")
    parser.add_argument("--threads", type=int, default=None, help="SERVING_THREADS for the service")
    parser.add_argument("--quick", action="store_true", help="the headline only, for a smoke test")
    parser.add_argument("--output", type=Path, default=BENCH / "results.json")
    parser.add_argument("--only-image", action="store_true",
                        help="the image part alone; replaces its key (image_model) in --output")
    parser.add_argument("--no-image", action="store_true", help="skip the image part")
    parser.add_argument("--only-memory", action="store_true",
                        help="the memory part alone (bench/memory.py); replaces its key (models_in_memory)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory part")
    parser.add_argument("--only-runaway", action="store_true",
                        help="the runaway part alone (bench/runaway.py); replaces its key")
    parser.add_argument("--only-request-path", action="store_true",
                        help="the request path part alone (bench/request_path.py); replaces its key")
    parser.add_argument("--only-run-memory", action="store_true",
                        help="the run-memory part alone (bench/run_memory.py); replaces its key (run_memory)")
    parser.add_argument("--no-run-memory", action="store_true", help="skip the run-memory part")
    parser.add_argument("--only-grpc", action="store_true",
                        help="the gRPC part alone (bench/grpc.py); replaces its key (grpc) in --output")
    parser.add_argument("--no-grpc", action="store_true", help="skip the gRPC part")
    parser.add_argument("--grpc-rounds", type=int, default=grpc_part.ROUNDS,
                        help=f"gRPC part: rounds (default {grpc_part.ROUNDS})")
    parser.add_argument("--grpc-seconds", type=int, default=grpc_part.SECONDS,
                        help=f"gRPC part: seconds per run (default {grpc_part.SECONDS})")
    parser.add_argument("--grpc-env", action="append", default=[], metavar="SERVING_NAME=VALUE",
                        help="gRPC part: a service setting, e.g. SERVING_GRPC_THREADS=1 (repeatable)")
    parser.add_argument("--only-overload", action="store_true",
                        help="the overload part alone (bench/overload.py); replaces its key (overload)")
    parser.add_argument("--no-overload", action="store_true", help="skip the overload part")
    parser.add_argument("--overload-rounds", type=int, default=overload_part.ROUNDS,
                        help=f"overload part: rounds (default {overload_part.ROUNDS})")
    parser.add_argument("--overload-seconds", type=int, default=overload_part.SECONDS,
                        help=f"overload part: seconds per run (default {overload_part.SECONDS})")
    parser.add_argument("--overload-env", action="append", default=[], metavar="SERVING_NAME=VALUE",
                        help="overload part: a service setting, e.g. SERVING_GRPC_QUEUE_BUDGET_MS=0")
    parser.add_argument("--image-rounds", type=int, default=image.ROUNDS,
                        help=f"image part: rounds (default {image.ROUNDS})")
    parser.add_argument("--image-seconds", type=int, default=image.SECONDS,
                        help=f"image part: seconds per floor or wrk run (default {image.SECONDS})")
    parser.add_argument("--image-connections", type=int, default=image.CONNECTIONS,
                        help=f"image part: wrk connections (default {image.CONNECTIONS})")
    parser.add_argument("--image-env", action="append", default=[], metavar="SERVING_NAME=VALUE",
                        help="image part: a service setting, e.g. SERVING_INTRA_OP_THREADS=2 (repeatable)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk", file=sys.stderr)
        return 1
    if any("=" not in setting for setting in args.image_env + args.grpc_env + args.overload_env):
        parser.error("--image-env takes SERVING_NAME=VALUE")
    if args.rounds < 1 or args.seconds < 1:
        parser.error("--rounds and --seconds take positive integers")

    if args.only_grpc:
        return run_only_grpc(args)
    if args.only_overload:
        return run_only_overload(args)
    if args.only_memory:
        return memory_part.main([f"--output={args.output}"])
    if args.only_request_path:
        return request_path.main([f"--output={args.output}"])
    if args.only_runaway:
        return runaway.main([f"--output={args.output}"])
    if args.only_run_memory:
        return run_memory_part.main([f"--output={args.output}"])
    if args.only_image:
        results = {}
        with contextlib.suppress(OSError, ValueError):
            results = json.loads(args.output.read_text())
    else:
        results = run_digits(args)
    if not args.no_grpc and not args.only_image:
        try:
            results["grpc"] = run_grpc(args)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
            print(f"gRPC part failed: {error}", file=sys.stderr)
            return 1
    if not args.no_image:
        try:
            results["image_model"] = run_image(args)
        except (image.BenchFailure, RuntimeError) as error:
            print(f"image part failed: {error}", file=sys.stderr)
            return 1
    if not args.no_overload and not args.only_image:
        try:
            results[overload_part.KEY] = run_overload(args)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
            print(f"overload part failed: {error}", file=sys.stderr)
            return 1
    if not args.no_memory and not args.only_image:
        try:
            results[memory_part.KEY] = run_memory()
        except (memory_part.BenchFailure, RuntimeError) as error:
            print(f"memory part failed: {error}", file=sys.stderr)
            return 1
    if not args.no_run_memory and not args.only_image:
        try:
            with tempfile.TemporaryDirectory() as scratch:
                results[run_memory_part.KEY] = run_memory_part.run(
                    Path(scratch), log=lambda line: print(line, flush=True))
            results[run_memory_part.KEY]["measured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        except (run_memory_part.BenchFailure, RuntimeError) as error:
            print(f"run-memory part failed: {error}", file=sys.stderr)
            return 1
    if not args.only_image:
        results[request_path.KEY] = request_path.run()
        with tempfile.TemporaryDirectory() as scratch:
            results[runaway.KEY] = runaway.run(Path(scratch), log=lambda line: print(line, flush=True))
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot(results, args.output.with_suffix(".png"))
    print()
    if not args.only_image:
        print(table(results))
        print()
    if "grpc" in results and not args.only_image:
        print("\n".join(grpc_part.lines(results["grpc"])))
        print()
    if overload_part.KEY in results and not args.only_image:
        print("\n".join(overload_part.lines(results[overload_part.KEY])))
        print()
    if "image_model" in results:
        print("\n".join(image.lines(results["image_model"])))
    if memory_part.KEY in results and not args.only_image:
        print()
        print("\n".join(memory_part.lines(results[memory_part.KEY])))
    if request_path.KEY in results and not args.only_image:
        print()
        print("\n".join(request_path.lines(results[request_path.KEY])))
        print("\n".join(runaway.lines(results[runaway.KEY])))
    if run_memory_part.KEY in results and not args.only_image:
        print()
        print("\n".join(run_memory_part.lines(results[run_memory_part.KEY])))
    failures = (0 if args.only_image else results["failed_requests"]
                + results.get("grpc", {}).get("failed_requests", 0)) + \
        results.get("image_model", {}).get("failed_requests", 0)
    elapsed = (0 if args.only_image else results["elapsed_s"]) + \
        results.get("image_model", {}).get("elapsed_s", 0)
    print(f"\nfailed requests: {failures}; {elapsed:.0f} s; "
          f"written {display(args.output)} and {display(args.output.with_suffix('.png'))}")
    return 1 if failures else 0


def display(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    sys.exit(main())
