"""The overload part of make bench: REST and gRPC driven past saturation, with a deadline.

One `python -m service` (nginx, gunicorn and its gRPC processes), single-row requests to `demand`.
REST goes through the front door, driven by wrk with bench/wrk_overload.lua (each status counted,
and whether a 503 carried Retry-After; wrk's --timeout is the client's deadline). gRPC is driven by
h2load POSTing one framed ModelInferRequest with the header `grpc-timeout` as the deadline, which
the server enforces. h2load records the HTTP status only, and a gRPC status is in the trailers,
which its -v output does not print; but a refusal or a passed deadline is a trailers-only answer,
whose grpc-status (and retry hints) come as headers, which it does print. So a call answered OK is
an HTTP 200 without a grpc-status header, and the rest are counted by their code. (grpc's Python
client reads every status, but spends about 170 µs of CPU per call on the same two cores: it
measured itself, not the server.) A call OK by the server's clock may still reach the client past
its deadline: those are counted out by duration (calls slower than the deadline beyond the
DEADLINE_EXCEEDED ones, which are the slowest).

First the concurrency that saturates each protocol: the least of LADDER whose answers per second
reach 95 % of the best; then, in rounds (the order reversed every other round), each protocol at
1x, 4x, 16x and 64x it, and gRPC with a 200 ms deadline at 1,024 calls (64 connections of 16
streams). Per level, medians of the rounds: goodput (answers within the deadline, per second) as
a share of the peak (the protocol's best goodput of the round), the p99 of accepted calls over
the p99 at 1x (refusals, the faster, left out by rank), refusals per second, their status and
retry hints, and any 5xx but 503; and the slowest of the probes sent meanwhile, ten a
second (REST's liveness, gRPC's health Check), which must answer within 100 ms.
Run alone: python -m bench.run --only-overload (key `overload` of bench/results.json).
"""

from __future__ import annotations

import collections
import json
import re
import shutil
import statistics
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.harness import BENCH, free_port, front_door, machine_cpu

KEY = "overload"  # of bench/results.json
ROUNDS = 3
SECONDS = 4
DEADLINE_S = 1.0  # the client's deadline at every level
LADDER = [1, 2, 4, 8, 16, 32]
LEVELS = [1, 4, 16, 64]
STORM = {"calls": 1024, "connections": 64, "deadline_ms": 200}  # the gRPC case
METHOD = "/inference.GRPCInferenceService/ModelInfer"
ROW = [19.99, 4.5, 2000.0, 7.0]  # demand's example row
# The targets, at 4x, 16x and 64x the saturating concurrency.
GOODPUT_SHARE, P99_RATIO, STORM_SHARE = 0.90, 2.0, 0.70
PROBE_EVERY, PROBE_MS = 0.1, 100  # probes a second, and how soon each must be answered


def rest_body(folder: Path) -> Path:
    path = folder / "demand.json"
    path.write_text(json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                            "data": [ROW]}]}))
    return path


def grpc_body(folder: Path) -> Path:
    """A length-prefixed gRPC message (as bench/grpc.py's): ModelInferRequest, raw FP32 input."""
    from service.stubs import messages

    request = messages.ModelInferRequest(model_name="demand")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.array([ROW], "<f4").tobytes())
    payload = request.SerializeToString()
    path = folder / "demand.grpc"
    path.write_bytes(struct.pack(">BI", 0, len(payload)) + payload)
    return path


def rest(url: str, body: Path, connections: int, seconds: int, deadline: float) -> dict:
    """One wrk run: answers by status, refusals (503) and those with Retry-After, goodput."""
    command = ["wrk", f"-t{min(connections, 2)}", f"-c{connections}", f"-d{seconds}s",
               f"--timeout={max(1, round(deadline))}s", "-s", str(BENCH / "wrk_overload.lua"),
               f"{url}/v2/models/demand/infer", "--", str(body)]
    before = machine_cpu()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = machine_cpu()
    line = next(line for line in output.splitlines() if line.startswith("WRK_OVERLOAD "))
    run = json.loads(line.removeprefix("WRK_OVERLOAD "))
    elapsed = run["duration_us"] / 1e6
    statuses = {int(status): n for status, n in run["statuses"].items()}
    answered = sum(n for status, n in statuses.items() if 200 <= status < 300)
    refused = statuses.get(503, 0)
    return {
        "connections": connections, "elapsed_s": elapsed, "statuses": statuses,
        # answers past the deadline are wrk's timeouts: counted out of the answers (at worst all 2xx)
        "goodput_per_s": max(0, answered - run["timeouts"]) / elapsed,
        "refused_per_s": refused / elapsed, "refused_with_retry_after": run["retry_after"],
        "refusal_status": "503" if refused else None,
        "other_5xx": sum(n for status, n in statuses.items() if status >= 500 and status != 503),
        "errors": run["socket_errors"], "timeouts": run["timeouts"],
        "p99_us": run["p99_us"], "machine_busy": (after[0] - before[0]) / (after[1] - before[1]),
    }


def grpc(port: int, body: Path, calls: int, seconds: int, deadline: float, folder: Path,
         connections: int | None = None) -> dict:
    """One h2load run of `calls` concurrent calls: answers by gRPC status (see the docstring),
    refusals with their retry hints, goodput within the deadline."""
    connections = connections or min(calls, 64)
    log = folder / "h2load-overload.log"
    log.unlink(missing_ok=True)  # h2load appends to it
    command = ["h2load", "-v", "-t1", f"-c{connections}", f"-m{max(1, calls // connections)}",
               f"-D{seconds}", "-H", "content-type: application/grpc", "-H", "te: trailers",
               "-H", f"grpc-timeout: {int(deadline * 1000)}m", "-d", str(body), f"--log-file={log}",
               f"http://127.0.0.1:{port}{METHOD}"]
    codes, hints, answered, summary = collections.Counter(), collections.Counter(), 0, []
    before = machine_cpu()
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        for line in process.stdout:
            if not line.startswith("[stream_id"):
                summary.append(line)
            elif ":status: 200" in line:
                answered += 1
            elif "] grpc-status: " in line:
                codes[int(line.rsplit(" ", 1)[1])] += 1
            elif "] retry-after: " in line or "] grpc-retry-pushback-ms: " in line:
                hints[line.split("] ", 1)[1].split(":", 1)[0]] += 1
    after = machine_cpu()
    if process.returncode:
        raise RuntimeError(f"h2load failed: {''.join(summary[-3:])}")
    done = re.search(r"finished in ([\d.]+)(m?s)", "".join(summary))
    elapsed = float(done.group(1)) / (1000 if done.group(2) == "ms" else 1)
    durations, reset = [], 0
    for line in log.read_text().splitlines():
        _, status, duration = line.split("\t")
        if status == "200":
            durations.append(int(duration))
        else:
            reset += 1  # the stream ended without an answer (RST_STREAM)
    ok = answered - sum(codes.values())
    expired, refused = codes.get(4, 0), codes.get(8, 0) + codes.get(14, 0)
    late = sum(d > deadline * 1e6 for d in durations)
    # OK by rank: the refusals the fastest, the passed deadlines the slowest answers
    durations.sort()
    accepted = durations[refused:len(durations) - expired] if ok > 0 else []
    return {
        "calls": calls, "connections": connections, "elapsed_s": elapsed,
        "grpc_statuses": {str(code): n for code, n in sorted(codes.items())} | {"0": ok},
        "goodput_per_s": max(0, ok - max(0, late - expired)) / elapsed,
        "refused_per_s": refused / elapsed, "refusal_status": {8: "RESOURCE_EXHAUSTED", 14: "UNAVAILABLE"}
        .get(max((8, 14), key=lambda code: codes.get(code, 0))) if refused else None,
        "refused_with_retry_after": hints.get("retry-after", 0),
        "refused_with_pushback": hints.get("grpc-retry-pushback-ms", 0),
        "reset": reset, "other_5xx": 0,
        "p99_us": float(np.percentile(accepted, 99)) if accepted else 0.0,
        "machine_busy": (after[0] - before[0]) / (after[1] - before[1]),
    }


class Probes:
    """While a run lasts, the probes a balancer sends, every PROBE_EVERY seconds in turn: REST's
    liveness through the front door and gRPC's health Check, each its latency (None: no answer
    within 2 s, or not SERVING / 200)."""

    def __init__(self, url: str, port: int):
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self.url, self.stop = url, threading.Event()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}",
                                             options=[("grpc.use_local_subchannel_pool", 1)])
        stub, request = health_pb2_grpc.HealthStub(self.channel), health_pb2.HealthCheckRequest()
        self.checks = {
            "rest": lambda: urllib.request.urlopen(f"{url}/v2/health/live", timeout=2).status == 200,
            "grpc": lambda: stub.Check(request, timeout=2).status == health_pb2.HealthCheckResponse.SERVING,
        }
        self.latencies: dict[str, list] = {"rest": [], "grpc": []}

    def __enter__(self):
        self.thread = threading.Thread(target=self.probe, daemon=True)
        self.thread.start()
        return self

    def probe(self) -> None:
        while not self.stop.wait(PROBE_EVERY):
            for protocol, check in self.checks.items():
                started = time.perf_counter()
                try:
                    answered = check()
                except Exception:  # a failed probe, whatever the cause: counted as none
                    answered = False
                self.latencies[protocol].append(time.perf_counter() - started if answered else None)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)
        self.channel.close()

    def worst_ms(self) -> dict:
        """The slowest probe of each protocol, in ms (one unanswered counts as its 2 s timeout)."""
        return {protocol: max((1000 * (2.0 if v is None else v) for v in values), default=0.0)
                for protocol, values in self.latencies.items()}


def saturation(drive: Callable[[int], dict], log: Callable[[str], None], name: str) -> tuple[int, list]:
    """The least concurrency of LADDER whose goodput reaches 95 % of the best on it, each the
    mean of two runs, up the ladder and down (one busy moment of the machine weighs half)."""
    rates = collections.defaultdict(list)
    for level in LADDER + LADDER[::-1]:
        rates[level].append(drive(level)["goodput_per_s"])
    ladder = [(level, statistics.mean(rates[level])) for level in LADDER]
    best = max(rate for _, rate in ladder)
    found = next(level for level, rate in ladder if rate >= 0.95 * best)
    log(f"  {name} saturates at {found}: " + ", ".join(f"c={c} {rate:.0f}/s" for c, rate in ladder))
    return found, ladder


def summarise(runs: list[dict], reference: list[dict], peaks: list[float]) -> dict:
    """Medians of a level's rounds; its goodput over the round's peak (the best goodput of the
    protocol's levels in that round) and its p99 over the p99 at 1x of the same round."""
    def median(key: str, of: list[dict] = runs) -> float:
        return statistics.median(run[key] for run in of)

    refused = sum(run["refused_per_s"] * run["elapsed_s"] for run in runs)
    return {
        "goodput_per_s": median("goodput_per_s"), "p99_us": median("p99_us"),
        "refused_per_s": median("refused_per_s"),
        "reset_per_s": statistics.median(run.get("reset", 0) / run["elapsed_s"] for run in runs),
        "goodput_share": statistics.median(a["goodput_per_s"] / peak
                                           for a, peak in zip(runs, peaks, strict=True)),
        "p99_ratio": statistics.median(a["p99_us"] / b["p99_us"] if b["p99_us"] else 0.0
                                       for a, b in zip(runs, reference, strict=True)),
        "refusal_status": next((run["refusal_status"] for run in runs if run["refusal_status"]), None),
        "refused": round(refused),
        "refused_with_retry_after": sum(run["refused_with_retry_after"] for run in runs),
        "other_5xx": sum(run["other_5xx"] for run in runs),
        "machine_busy": median("machine_busy"),
        "probes_worst_ms": {protocol: max(run["probes_worst_ms"][protocol] for run in runs)
                            for protocol in ("rest", "grpc")},
    }


def run(folder: Path, rounds: int = ROUNDS, seconds: int = SECONDS, environment: dict | None = None,
        log: Callable[[str], None] = print) -> dict:
    for tool, package in (("wrk", "wrk"), ("h2load", "nghttp2-client")):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: apt-get install {package}")
    started = time.monotonic()
    port = free_port()
    env = {"SERVING_GRPC_BIND": f"127.0.0.1:{port}", **(environment or {})}
    port = int(env["SERVING_GRPC_BIND"].rsplit(":", 1)[1])
    bodies = {"rest": rest_body(folder), "grpc": grpc_body(folder)}
    with front_door(env, folder / "service-overload.log") as server:
        def drive(protocol: str, calls: int, duration: int = seconds, **storm) -> dict:
            with Probes(server.url, port) as probes:
                if protocol == "rest":
                    result = rest(server.url, bodies["rest"], calls, duration, DEADLINE_S)
                else:
                    result = grpc(port, bodies["grpc"], calls, duration, storm.get("deadline", DEADLINE_S),
                                  folder, storm.get("connections"))
            result["probes_worst_ms"] = probes.worst_ms()
            return result

        log(f"overload part: python -m service, demand, 1 row; deadline {DEADLINE_S:g} s; "
            f"{rounds} rounds of {seconds} s; settings {environment or 'default'}")
        for protocol in ("rest", "grpc"):  # warm-up, not counted
            drive(protocol, 8, 1)
        saturating, ladders = {}, {}
        for protocol in ("rest", "grpc"):
            saturating[protocol], ladders[protocol] = saturation(
                lambda calls, p=protocol: drive(p, calls, 2), log, protocol)
        plan = [(protocol, factor) for factor in LEVELS for protocol in ("rest", "grpc")] + [("storm", 0)]
        runs: dict[tuple, list] = collections.defaultdict(list)
        for number in range(rounds):
            for protocol, factor in plan if number % 2 == 0 else plan[::-1]:
                if protocol == "storm":
                    runs[protocol, factor].append(drive(
                        "grpc", STORM["calls"], connections=STORM["connections"],
                        deadline=STORM["deadline_ms"] / 1000))
                else:
                    runs[protocol, factor].append(drive(protocol, factor * saturating[protocol]))
            log(f"  round {number + 1}: " + ", ".join(
                f"{protocol} {factor}x {runs[protocol, factor][-1]['goodput_per_s']:.0f}/s"
                for protocol, factor in plan))
    results = {"settings": {"rounds": rounds, "seconds_per_run": seconds, "deadline_s": DEADLINE_S,
                            "environment": env, "model": "demand, 1 row",
                            "load": "wrk (bench/wrk_overload.lua) for REST through the front door, "
                                    "h2load -v for gRPC"},
               "saturating": saturating, "ladders": ladders, "protocols": {}}
    peaks = {protocol: [max(runs[protocol, factor][number]["goodput_per_s"] for factor in LEVELS)
                        for number in range(rounds)] for protocol in ("rest", "grpc")}
    for protocol in ("rest", "grpc"):
        reference = runs[protocol, 1]
        results["protocols"][protocol] = {
            f"{factor}x": dict(summarise(runs[protocol, factor], reference, peaks[protocol]),
                               calls=factor * saturating[protocol], rounds=runs[protocol, factor])
            for factor in LEVELS}
    storm = runs["storm", 0]
    results["storm"] = dict(summarise(storm, runs["grpc", 1], peaks["grpc"]), **STORM, rounds=storm)
    results["targets"] = targets(results)
    results["measured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results["elapsed_s"] = time.monotonic() - started
    return results


def targets(results: dict) -> list[dict]:
    """The issue's targets, each with its figure and whether it is met."""
    found = []
    for protocol, levels in results["protocols"].items():
        for level, figures in levels.items():
            if level == "1x":
                continue
            share, ratio = figures["goodput_share"], figures["p99_ratio"]
            found.append({"what": f"{protocol} {level} goodput, share of the peak", "value": share,
                          "limit": f">= {GOODPUT_SHARE}", "met": share >= GOODPUT_SHARE})
            found.append({"what": f"{protocol} {level} accepted p99 / p99 at 1x", "value": ratio,
                          "limit": f"<= {P99_RATIO}", "met": 0 < ratio <= P99_RATIO})
        refused = sum(f["refused"] for f in levels.values())
        hinted = sum(f["refused_with_retry_after"] for f in levels.values())
        found.append({"what": f"{protocol} refusals with Retry-After ({hinted} of {refused})",
                      "value": hinted / refused if refused else 1.0, "limit": "== 1",
                      "met": hinted == refused})
        other = sum(f["other_5xx"] for f in levels.values())
        found.append({"what": f"{protocol} 5xx other than 503", "value": other, "limit": "== 0",
                      "met": other == 0})
    worst = max(max(f["probes_worst_ms"].values()) for levels in results["protocols"].values()
                for f in levels.values())
    worst = max(worst, *results["storm"]["probes_worst_ms"].values())
    found.append({"what": "slowest probe (REST live, gRPC health) at any level, ms", "value": worst,
                  "limit": f"<= {PROBE_MS}", "met": worst <= PROBE_MS})
    share = results["storm"]["goodput_share"]
    found.append({"what": "grpc 1,024 calls, 200 ms deadline: OK in time, share of the peak", "value": share,
                  "limit": f">= {STORM_SHARE}", "met": share >= STORM_SHARE})
    return found


def lines(results: dict) -> list[str]:
    settings = results["settings"]
    out = [f"Overload (one python -m service, demand 1 row; medians of {settings['rounds']} rounds of "
           f"{settings['seconds_per_run']} s; deadline {settings['deadline_s']:g} s; saturating: REST "
           f"c={results['saturating']['rest']}, gRPC {results['saturating']['grpc']} calls)",
           f"{'':<16}{'calls':>7}{'goodput/s':>11}{'of peak':>8}{'p99 ms':>8}{'x 1x':>6}"
           f"{'refused/s':>11}  refusal, with retry hint; 5xx not 503; machine busy"]
    for protocol, levels in results["protocols"].items():
        for level, f in levels.items():
            out.append(f"  {protocol:<6}{level:>8}{f['calls']:>7}{f['goodput_per_s']:>11.0f}"
                       f"{100 * f['goodput_share']:>7.0f}%{f['p99_us'] / 1000:>8.1f}{f['p99_ratio']:>6.1f}"
                       f"{f['refused_per_s']:>11.0f}  {f['refusal_status'] or '-'}, "
                       f"{f['refused_with_retry_after']} of {f['refused']}; {f['other_5xx']}; "
                       f"{100 * f['machine_busy']:.0f}%")
    storm = results["storm"]
    out.append(f"  gRPC {storm['calls']} calls, {storm['deadline_ms']} ms deadline: OK in time "
               f"{storm['goodput_per_s']:.0f}/s, {100 * storm['goodput_share']:.0f}% of the peak; refused "
               f"{storm['refused_per_s']:.0f}/s ({storm['refusal_status'] or '-'})")
    out.append("  slowest probe during each run, REST live / gRPC health ms: " + ", ".join(
        f"{protocol} {level} {f['probes_worst_ms']['rest']:.0f}/{f['probes_worst_ms']['grpc']:.0f}"
        for protocol, levels in results["protocols"].items() for level, f in levels.items())
        + f", storm {storm['probes_worst_ms']['rest']:.0f}/{storm['probes_worst_ms']['grpc']:.0f}")
    grpc_levels = results["protocols"]["grpc"].values()
    out.append("  gRPC streams reset (HTTP/2, none answered) per second: " + ", ".join(
        f"{f['reset_per_s']:.0f}" for f in grpc_levels) + f"; storm {storm['reset_per_s']:.0f}")
    for target in results["targets"]:
        out.append(f"  {target['what']}: {target['value']:.2f} (target {target['limit']}): "
                   f"{'MEETS' if target['met'] else 'MISSES'}")
    return out

