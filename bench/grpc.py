"""The gRPC part of make bench: ModelInfer on the service's gRPC port beside REST through its front door.

One `python -m service` (nginx, gunicorn and its gRPC processes, SERVING_GRPC_BIND on a free
loopback port). gRPC is driven by h2load (Debian's nghttp2-client), a C load generator like wrk,
POSTing one fixed gRPC frame (1 byte 0, not compressed; 4 bytes big-endian length; a serialized
ModelInferRequest with raw FP32 input) to /inference.GRPCInferenceService/ModelInfer. h2load sees
HTTP 200 for every call, the gRPC status being in the trailers: so each gRPC run counts its calls
answered OK from the /metrics delta of serving_requests_total{protocol="grpc",status="OK"}, and
every call h2load completed beyond that is a failure.

Scenarios, in rounds (the order reversed every other round), medians of the rounds:
- gRPC, 1 row, 8 connections, 1 call in flight on each (and 4 in flight);
- REST v2 JSON, 1 row, wrk c=8 (the headline's single-row scenario);
- gRPC 256 rows raw, 4 connections; REST v2 binary 256 rows, wrk c=4.
Targets (the issue's): gRPC single-row requests/s >= 1.3x REST's; gRPC 256-row raw rows/s >= REST's
v2 binary rows/s. Run alone: python -m bench.run --only-grpc.
"""

from __future__ import annotations

import re
import resource
import shutil
import statistics
import struct
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.harness import Server, cpu_seconds, free_port, front_door, machine_cpu, medians, wrk

ROUNDS = 3
SECONDS = 4
METHOD = "/inference.GRPCInferenceService/ModelInfer"

# key, label, protocol, rows, connections, calls in flight per connection (gRPC) or body kind (REST)
SCENARIOS = [
    {"key": "grpc1", "label": "gRPC ModelInfer raw FP32, 1 row, c=8 m=1", "protocol": "grpc", "rows": 1,
     "c": 8, "m": 1},
    {"key": "grpc1_m4", "label": "gRPC ModelInfer raw FP32, 1 row, c=8 m=4", "protocol": "grpc", "rows": 1,
     "c": 8, "m": 4},
    {"key": "rest1", "label": "REST v2 JSON, 1 row, c=8", "protocol": "rest", "rows": 1, "c": 8,
     "kind": "v2"},
    {"key": "grpc256", "label": "gRPC ModelInfer raw FP32, 256 rows, c=4", "protocol": "grpc", "rows": 256,
     "c": 4, "m": 1},
    {"key": "rest256", "label": "REST v2 binary, 256 rows, c=4", "protocol": "rest", "rows": 256, "c": 4,
     "kind": "v2b"},
]
GROUPS = [["grpc1", "grpc1_m4", "rest1"], ["grpc256", "rest256"]]
# (mine, theirs, figure, limit): mine/theirs per round, median >= limit
TARGETS = [("grpc1", "rest1", "requests_per_s", 1.3), ("grpc256", "rest256", "rows_per_s", 1.0)]


def grpc_frame(x: np.ndarray) -> bytes:
    """A length-prefixed gRPC message: ModelInferRequest for digits, raw little-endian FP32 input."""
    from service.stubs import messages

    request = messages.ModelInferRequest(model_name="digits")
    request.inputs.add(name="pixels", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    payload = request.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def grpc_counts(url: str) -> dict[str, float]:
    """serving_requests_total with protocol="grpc", summed by status."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    counts: dict[str, float] = {}
    for labels, value in re.findall(r"^serving_requests_total\{([^}]*)\}\s+(\S+)$", text, re.M):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields.get("protocol") == "grpc":
            counts[fields["status"]] = counts.get(fields["status"], 0.0) + float(value)
    return counts


def grpc_processes(server: Server) -> list[int]:
    return sorted(pid for pid, (_, command) in server.descendants().items()
                  if "service.grpc.server" in command)


def h2load(server: Server, port: int, body: Path, connections: int, in_flight: int, seconds: int,
           folder: Path) -> dict:
    """One h2load run, as harness.wrk: requests, requests/s, p50 and p99 in µs (from its per-request
    log), failures (calls not answered OK, by the metrics), CPU µs per request of the gRPC
    processes and of h2load."""
    log = folder / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends to it
    command = ["h2load", "-t1", f"-c{connections}", f"-m{in_flight}", f"-D{seconds}",
               "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body),
               f"--log-file={log}", f"http://127.0.0.1:{port}{METHOD}"]
    pids = grpc_processes(server)
    before, counts_before = cpu_seconds(pids), grpc_counts(server.url)
    load_before, machine_before = resource.getrusage(resource.RUSAGE_CHILDREN), machine_cpu()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    load_after, machine_after = resource.getrusage(resource.RUSAGE_CHILDREN), machine_cpu()
    used, counts_after = cpu_seconds(pids) - before, grpc_counts(server.url)
    durations, statuses = [], {}
    for line in log.read_text().splitlines():
        _, status, duration = line.split("\t")
        statuses[status] = statuses.get(status, 0) + 1
        durations.append(int(duration))
    done = re.search(r"finished in ([\d.]+)(m?s)", output)
    elapsed = float(done.group(1)) / (1000 if done.group(2) == "ms" else 1)
    ok = counts_after.get("OK", 0.0) - counts_before.get("OK", 0.0)
    answered = sum(counts_after.values()) - sum(counts_before.values())
    requests = len(durations)
    per_request = 1e6 / max(1, requests)
    cpu = {"grpc_processes": per_request * used,
           "h2load": per_request * (load_after.ru_utime + load_after.ru_stime
                                    - load_before.ru_utime - load_before.ru_stime)}
    busy, total = machine_after[0] - machine_before[0], machine_after[1] - machine_before[1]
    return {
        "requests": requests, "duration_us": elapsed * 1e6, "requests_per_s": requests / elapsed,
        "p50_us": float(np.percentile(durations, 50)) if durations else 0.0,
        "p99_us": float(np.percentile(durations, 99)) if durations else 0.0,
        "http_statuses": statuses, "grpc_ok": ok, "grpc_not_ok": answered - ok,
        # calls h2load completed (its log holds only those) that the server did not answer OK
        "failures": max(0, requests - int(ok)) + sum(n for s, n in statuses.items() if s != "200"),
        "cpu_us_per_request": cpu,
        "machine": {"busy_share": busy / total,
                    "other_share": max(0.0, busy - sum(cpu.values()) / per_request) / total},
    }


def run(folder: Path, rounds: int = ROUNDS, seconds: int = SECONDS, environment: dict | None = None,
        log: Callable[[str], None] = print) -> dict:
    from bench.run import body_file

    if shutil.which("h2load") is None:
        raise RuntimeError("h2load is missing: apt-get install nghttp2-client")
    started = time.monotonic()
    port = free_port()
    env = {"SERVING_GRPC_BIND": f"127.0.0.1:{port}", **(environment or {})}
    port = int(env["SERVING_GRPC_BIND"].rsplit(":", 1)[1])
    bodies = {}
    for scenario in SCENARIOS:
        if scenario["protocol"] == "grpc":
            from bench.run import digits_rows

            path = folder / f"grpc-{scenario['rows']}.body"
            path.write_bytes(grpc_frame(digits_rows(scenario["rows"])))
            bodies[scenario["key"]] = (path, None)
        else:
            bodies[scenario["key"]] = body_file(folder, scenario["kind"], scenario["rows"])
    by_key = {s["key"]: dict(s, rounds=[]) for s in SCENARIOS}

    with front_door(env, folder / "service-grpc.log") as server:
        def drive(key: str, duration: int) -> dict:
            scenario, (body, header_length) = by_key[key], bodies[key]
            if scenario["protocol"] == "grpc":
                return h2load(server, port, body, scenario["c"], scenario["m"], duration, folder)
            result = wrk(server.url + "/v2/models/digits/infer", body, header_length, scenario["c"],
                         duration, server)
            result["failures"] = result["non_2xx"] + result["socket_errors"]
            return result

        log(f"gRPC part: python -m service, gRPC on 127.0.0.1:{port} ({len(grpc_processes(server))} "
            f"processes, SERVING_GRPC_THREADS={env.get('SERVING_GRPC_THREADS', 'default')}); "
            f"{rounds} rounds of {seconds} s")
        for group in GROUPS:  # warm-up, not counted
            for key in group:
                drive(key, 1)
        for number in range(rounds):
            for group in GROUPS:
                for key in group if number % 2 == 0 else group[::-1]:
                    by_key[key]["rounds"].append(drive(key, seconds))
            log(f"  round {number + 1}: " + ", ".join(
                f"{key} {s['rounds'][-1]['requests_per_s']:.0f}" for key, s in by_key.items()) + " req/s")

    for scenario in by_key.values():
        scenario["figures"] = medians(scenario["rounds"], scenario["rows"])
    targets = []
    for mine, theirs, figure, limit in TARGETS:
        scale = by_key[mine]["rows"] / by_key[theirs]["rows"]
        per_round = [scale * a["requests_per_s"] / b["requests_per_s"]
                     for a, b in zip(by_key[mine]["rounds"], by_key[theirs]["rounds"], strict=True)]
        value = statistics.median(per_round)
        targets.append({"mine": mine, "theirs": theirs, "figure": figure, "limit": limit,
                        "per_round": per_round, "median_of_rounds": value, "met": value >= limit})
    return {
        "settings": {"rounds": rounds, "seconds_per_run": seconds, "environment": env,
                     "load": "h2load (nghttp2-client) for gRPC, wrk for REST"},
        "scenarios": list(by_key.values()),
        "targets": targets,
        "failed_requests": sum(r["failures"] for s in by_key.values() for r in s["rounds"]),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": time.monotonic() - started,
    }


def lines(results: dict) -> list[str]:
    settings = results["settings"]
    out = [f"gRPC beside REST (one python -m service; medians of {settings['rounds']} rounds of "
           f"{settings['seconds_per_run']} s; gRPC by h2load, REST by wrk through the front door)",
           f"{'':<44}{'rows/s':>10}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
           "  server CPU µs/req, per round req/s"]
    for scenario in results["scenarios"]:
        figures, cpu = scenario["figures"], scenario["figures"]["cpu_us_per_request"]
        server_cpu = cpu.get("grpc_processes", cpu.get("workers", 0.0) + cpu.get("nginx", 0.0))
        out.append(f"  {scenario['label']:<42}{figures['rows_per_s']:>10.0f}{figures['requests_per_s']:>9.0f}"
                   f"{figures['p50_us'] / 1000:>8.2f}{figures['p99_us'] / 1000:>8.2f}  {server_cpu:6.0f}; "
                   + " ".join(f"{r['requests_per_s']:.0f}" for r in scenario["rounds"]))
    for target in results["targets"]:
        per_round = ", ".join(f"{v:.2f}" for v in target["per_round"])
        out.append(f"  {target['mine']} / {target['theirs']} {target['figure']}: "
                   f"{target['median_of_rounds']:.2f}x (rounds {per_round}; target >= {target['limit']}): "
                   f"{'meets' if target['met'] else 'MISSES'}")
    return out
