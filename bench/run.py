"""make bench: the service against onnxruntime and a bare Flask baseline; an imported image model.

Both servers run under gunicorn on loopback and are driven by wrk, one scenario at a time,
baseline and service alternating so that both see the same machine. Then an imported
convolutional network (MobileNetV3Small, 96x96x3, batch 32) against its own onnxruntime floor
(bench/image.py). Prints one table and writes bench/results.json and bench/results.png. About
four minutes on 2 cores; `--only-image` runs the image part alone (about a minute and a half)
and updates its key of results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime

from bench import image

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
MODELS = ROOT / "models"
HEADER_LENGTH = "Inference-Header-Content-Length"


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


def v2_json(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.tolist()}]}).encode()


def v2_binary(x: np.ndarray) -> tuple[bytes, int]:
    blob = x.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + blob, len(header)


def tf_predict(x: np.ndarray) -> bytes:
    return json.dumps({"instances": x.tolist()}).encode()


# --- servers ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def digits_answer(url: str, log: Path) -> bool:
    """The default readiness test: the digits model answers."""
    try:
        urllib.request.urlopen(f"{url}/v2/models/digits/infer", data=v2_json(digits_rows(1)),
                               timeout=2).read()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def gunicorn(arguments: list[str], environment: dict, log: Path,
             ready: Callable[[str, Path], bool] = digits_answer):
    """A gunicorn on a free loopback port, yielded once ready(url, log) is true."""
    port = free_port()
    env = {**os.environ, **environment, "SERVING_BIND": f"127.0.0.1:{port}"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                                    *arguments], cwd=ROOT, env=env, stdout=output,
                                   stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while not ready(url, log):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
                    raise RuntimeError("gunicorn did not start: " + " | ".join(tail))
                time.sleep(0.2)
            yield url, process
        finally:
            process.terminate()
            process.wait(timeout=30)


def worker_memory(master: subprocess.Popen) -> list[dict]:
    """RSS and PSS (shared pages divided among sharers) of each worker, in MB."""
    children = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True)
    figures = []
    for pid in children.stdout.split():
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        kb = {key: int(value) for key, value in re.findall(r"^(Rss|Pss):\s+(\d+) kB", rollup, re.M)}
        figures.append({"pid": int(pid), "rss_mb": kb["Rss"] / 1024, "pss_mb": kb["Pss"] / 1024})
    return figures


# --- load -------------------------------------------------------------------------------------

def warm_up(url: str, count: int) -> int:
    """Exactly count single-row requests, so that memory can be read after a known number."""
    body = v2_json(digits_rows(1))
    for _ in range(count):
        request = urllib.request.Request(f"{url}/v2/models/digits/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=5).read()
    return count


def wrk(url: str, body: Path, header_length: int | None, connections: int, seconds: float) -> dict:
    command = ["wrk", f"-t{min(connections, 2)}", f"-c{connections}", f"-d{seconds:g}s",
               "-s", str(BENCH / "wrk_post.lua"), url, "--", str(body)]
    if header_length is not None:
        command.append(str(header_length))
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRK_RESULT "))
    result = json.loads(line.removeprefix("WRK_RESULT "))
    result["requests_per_s"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def scenarios(quick: bool) -> list[dict]:
    single = [("v2 JSON", "v2", 1), ("v2 binary", "v2b", 1), ("TF :predict", "tf", 1)]
    concurrencies = (1, 8) if quick else (1, 8, 32)
    plan = [{"group": "single row", "protocol": label, "kind": kind, "rows": 1, "c": c,
             "data": "digits"} for c in concurrencies for label, kind, _ in single]
    for rows in (32, 256) if quick else (32, 256, 1024):
        plan += [{"group": "batch", "protocol": label, "kind": kind, "rows": rows, "c": 4,
                  "data": "digits"} for label, kind in (("v2 JSON", "v2"), ("v2 binary", "v2b"))]
    plan.append({"group": "batch", "protocol": "v2 JSON", "kind": "v2", "rows": 256, "c": 4,
                 "data": "random"})
    return plan


def body_file(folder: Path, kind: str, rows: int, data: str) -> tuple[Path, int | None]:
    x = (digits_rows if data == "digits" else random_rows)(rows)
    header_length = None
    if kind == "v2":
        payload = v2_json(x)
    elif kind == "v2b":
        payload, header_length = v2_binary(x)
    else:
        payload = tf_predict(x)
    path = folder / f"{kind}-{rows}-{data}.body"
    path.write_bytes(payload)
    return path, header_length


def path_for(kind: str) -> str:
    return "/v1/models/digits:predict" if kind == "tf" else "/v2/models/digits/infer"


# --- report -----------------------------------------------------------------------------------

def table(results: dict) -> str:
    floor = results["floor_us"]["digits"]
    lines = [
        "onnxruntime floor, µs per call (1 thread): " + ", ".join(
            f"{name} {f['1']:.1f} (1 row) / {f['256']:.1f} (256 rows)"
            for name, f in results["floor_us"].items()),
        "",
        f"{'scenario':<34}{'rows/s':>10}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'x base':>8}{'p99 x base':>11}{'% floor':>8}",
    ]
    for row in results["scenarios"]:
        service, base = row["service"], row.get("baseline_figures")
        rows_per_s = service["requests_per_s"] * row["rows"]
        floor_rows = 2 * row["rows"] / (floor[str(row["rows"])] if str(row["rows"]) in floor
                                       else floor["256"] * row["rows"] / 256) * 1e6
        label = f"{row['protocol']} {row['rows']} row{'s' if row['rows'] > 1 else ''}" \
                f"{' random' if row['data'] == 'random' else ''} c={row['c']}"
        ratio = f"{row['ratio_rps']:.2f}" if base else ""
        p99_ratio = f"{row['ratio_p99']:.2f}" if base else ""
        lines.append(f"{label:<34}{rows_per_s:>10.0f}{service['requests_per_s']:>9.0f}"
                     f"{service['p50_us'] / 1000:>8.2f}{service['p99_us'] / 1000:>8.2f}"
                     f"{ratio:>8}{p99_ratio:>11}{100 * rows_per_s / floor_rows:>7.1f}%")
        if row.get("baseline"):
            b = row["baseline"]
            lines.append(f"{'  baseline (bare Flask, json)':<34}{b['requests_per_s'] * row['rows']:>10.0f}"
                         f"{b['requests_per_s']:>9.0f}{b['p50_us'] / 1000:>8.2f}"
                         f"{b['p99_us'] / 1000:>8.2f}")
    memory = results["memory"]
    lines += ["", "memory per worker (MB): " + "; ".join(
        f"after {m['requests']:,} requests RSS {m['rss_mb']:.1f} PSS {m['pss_mb']:.1f}"
        for m in memory["samples"]) + f"; growth {memory['growth_percent']:+.1f}%"]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results.get("scenarios", [])
    picture = results.get("image_model")
    panels = [kind for kind, present in (("digits", rows), ("image", picture)) if present]
    if not panels:
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(13 + 4 * (len(panels) - 1), 5), squeeze=False,
                                gridspec_kw={"width_ratios": [3 if p == "digits" else 1 for p in panels]})
    for axis, panel in zip(axes[0], panels, strict=True):
        if panel == "digits":
            plot_digits(axis, rows)
        else:
            plot_image(axis, picture)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_digits(axis, rows: list[dict]) -> None:
    labels = [f"{r['protocol']}\n{r['rows']} rows c={r['c']}" + (" rnd" if r["data"] == "random" else "")
              for r in rows]
    service = [r["service"]["requests_per_s"] * r["rows"] for r in rows]
    baseline = [r["baseline_figures"]["requests_per_s"] * r["rows"] if r.get("baseline_figures") else 0
                for r in rows]
    positions = np.arange(len(rows))
    axis.bar(positions - 0.2, service, 0.4, label="service")
    axis.bar(positions + 0.2, baseline, 0.4, label="baseline (bare Flask, v2 JSON)")
    axis.set_yscale("log")
    axis.set_ylabel("rows per second (log)")
    axis.set_xticks(positions, labels, fontsize=7, rotation=35, ha="right")
    axis.legend()
    axis.set_title("digits model, 2 gunicorn workers, wrk on the same 2 cores")


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
    axis.legend(fontsize=7, loc="lower right")
    axis.set_title(f"imported MobileNetV3Small 96x96x3, batch {figures['batch']}", fontsize=9)


# --- main -------------------------------------------------------------------------------------

def run_digits(args: argparse.Namespace) -> dict:
    """The digits part: the service and the bare Flask baseline, alternating, and the floor."""
    started = time.monotonic()
    floor = {}
    for model in ("demand", "digits", "digits-binary"):
        path = MODELS / model / "1" / "model.onnx"
        floor[model] = {"1": floor_us(path, 1), "256": floor_us(path, 256), "32": floor_us(path, 32),
                        "1024": floor_us(path, 1024)}

    service_env = {"SERVING_WORKERS": str(args.workers)}
    if args.threads:
        service_env["SERVING_THREADS"] = str(args.threads)
    plan = scenarios(args.quick)
    served_requests = 0
    memory_samples = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        with gunicorn(["--config", "service/gunicorn.conf.py"], service_env, folder / "service.log") \
                as (service_url, service_process), \
                gunicorn(["--workers", "2", "bench.baseline_app:app"], {}, folder / "baseline.log") \
                as (baseline_url, _):
            memory_samples.append({"requests": warm_up(service_url, 1000),
                                   "workers": worker_memory(service_process)})
            served_requests = memory_samples[0]["requests"]
            baseline_cache: dict = {}
            for step in plan:
                body, header_length = body_file(folder, step["kind"], step["rows"], step["data"])
                # The baseline speaks JSON only: binary and TF figures compare with its v2 JSON.
                key = (step["rows"], step["c"], step["data"])
                if key not in baseline_cache:
                    json_body, _ = body_file(folder, "v2", step["rows"], step["data"])
                    baseline_cache[key] = wrk(baseline_url + "/v2/models/digits/infer", json_body,
                                              None, step["c"], args.seconds)
                    step["baseline"] = baseline_cache[key]
                step["baseline_figures"] = baseline_cache[key]
                step["service"] = wrk(service_url + path_for(step["kind"]), body, header_length,
                                      step["c"], args.seconds)
                served_requests += step["service"]["requests"]
                step["ratio_rps"] = (step["service"]["requests_per_s"]
                                     / step["baseline_figures"]["requests_per_s"])
                step["ratio_p99"] = step["service"]["p99_us"] / step["baseline_figures"]["p99_us"]
                print(f"  {step['protocol']:<12} rows={step['rows']:<5} c={step['c']:<3} "
                      f"{step['service']['requests_per_s']:8.0f} req/s  x{step['ratio_rps']:.2f} "
                      f"of baseline", flush=True)
            memory_samples.append({"requests": served_requests, "workers": worker_memory(service_process)})

    def mean_of(sample, key):
        return statistics.mean(w[key] for w in sample["workers"])

    memory = {
        "samples": [{"requests": s["requests"], "rss_mb": mean_of(s, "rss_mb"),
                     "pss_mb": mean_of(s, "pss_mb"), "workers": s["workers"]} for s in memory_samples],
    }
    memory["growth_percent"] = 100 * (memory["samples"][-1]["rss_mb"] / memory["samples"][0]["rss_mb"] - 1)
    failures = sum(s[k]["non_2xx"] + s[k]["socket_errors"] for s in plan
                   for k in ("service", "baseline") if k in s)
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "onnxruntime": onnxruntime.__version__},
        "settings": {"seconds_per_run": args.seconds, "workers": args.workers, "threads": args.threads,
                     "baseline": "bench/baseline_app.py, gunicorn 2 sync workers"},
        "floor_us": floor,
        "scenarios": plan,
        "memory": memory,
        "failed_requests": failures,
        "elapsed_s": time.monotonic() - started,
    }
    return results


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=4, help="per wrk run (default 4)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="SERVING_THREADS for the service")
    parser.add_argument("--quick", action="store_true", help="fewer scenarios, for a smoke test")
    parser.add_argument("--output", type=Path, default=BENCH / "results.json")
    parser.add_argument("--only-image", action="store_true",
                        help="the image part alone; replaces its key (image_model) in --output")
    parser.add_argument("--no-image", action="store_true", help="skip the image part")
    parser.add_argument("--image-rounds", type=int, default=image.ROUNDS,
                        help=f"image part: rounds (default {image.ROUNDS})")
    parser.add_argument("--image-seconds", type=float, default=image.SECONDS,
                        help=f"image part: seconds per floor or wrk run (default {image.SECONDS})")
    parser.add_argument("--image-connections", type=int, default=image.CONNECTIONS,
                        help=f"image part: wrk connections (default {image.CONNECTIONS})")
    parser.add_argument("--image-env", action="append", default=[], metavar="SERVING_NAME=VALUE",
                        help="image part: a service setting, e.g. SERVING_INTRA_OP_THREADS=2 (repeatable)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk", file=sys.stderr)
        return 1
    if any("=" not in setting for setting in args.image_env):
        parser.error("--image-env takes SERVING_NAME=VALUE")

    if args.only_image:
        results = {}
        with contextlib.suppress(OSError, ValueError):
            results = json.loads(args.output.read_text())
    else:
        results = run_digits(args)
    if not args.no_image:
        try:
            results["image_model"] = run_image(args)
        except (image.BenchFailure, RuntimeError) as error:
            print(f"image part failed: {error}", file=sys.stderr)
            return 1
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot(results, args.output.with_suffix(".png"))
    print()
    if not args.only_image:
        print(table(results))
        print()
    if "image_model" in results:
        print("\n".join(image.lines(results["image_model"])))
    failures = (0 if args.only_image else results["failed_requests"]) + \
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
