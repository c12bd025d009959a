"""make bench, the request path's part: what each feature on the request path costs.

A single-row v2 JSON request to `demand` through the app's WSGI callable, in this process: no
sockets and no wrk, whose noise is larger than the microseconds measured here. For each feature,
two apps, one with it on (as `python -m service` runs it) and one with it off, called CALLS times
in turn, the order swapped every round; the figure is the median over ROUNDS rounds of each app's
microseconds per call, and the cost is the median of the per-round ratios on/off.

    python -m bench.request_path   # prints the lines and updates request_path in bench/results.json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import write_part
from service import create_app

ROOT = Path(__file__).resolve().parent.parent
KEY = "request_path"
ROUNDS, CALLS = 15, 2000
BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                               "data": [19.99, 4.5, 2000, 7]}]}).encode()
CEILING = 1.05  # a feature on the request path may cost at most this ratio to its off


def features(scratch: Path) -> dict[str, tuple[dict, dict]]:
    """name: (settings with it on, as python -m service runs it; with it off)."""
    return {
        "run limits (time, share; service/core/limits.py)": (
            {"run_slots": scratch}, {"run_timeout_ms": 0, "model_long_runs": "off"}),
    }


def environ() -> dict:
    return {"REQUEST_METHOD": "POST", "PATH_INFO": "/v2/models/demand/infer", "QUERY_STRING": "",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(BODY)),
            "wsgi.input": io.BytesIO(BODY), "wsgi.url_scheme": "http", "SERVER_NAME": "bench",
            "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1"}


def per_call_us(app, calls: int) -> float:
    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    started = time.perf_counter()
    for _ in range(calls):
        b"".join(app(environ(), start_response))
    elapsed = time.perf_counter() - started
    if any(not status.startswith("200") for status in statuses):
        raise RuntimeError(f"the app answered {sorted(set(statuses))}")
    return elapsed / calls * 1e6


def measure(on: dict, off: dict, rounds: int, calls: int) -> dict:
    apps = {"on": create_app({"poll_interval": 0, **on}), "off": create_app({"poll_interval": 0, **off})}
    times: dict[str, list[float]] = {"on": [], "off": []}
    for side in apps:  # warm up
        per_call_us(apps[side], calls // 4)
    for index in range(rounds):
        for side in (("on", "off") if index % 2 == 0 else ("off", "on")):
            times[side].append(per_call_us(apps[side], calls))
    ratios = [on_us / off_us for on_us, off_us in zip(times["on"], times["off"], strict=True)]
    return {"on_us": statistics.median(times["on"]), "off_us": statistics.median(times["off"]),
            "ratio": statistics.median(ratios), "rounds": rounds, "calls": calls}


def run(rounds: int = ROUNDS, calls: int = CALLS) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        figures = {name: measure(on, off, rounds, calls)
                   for name, (on, off) in features(Path(scratch)).items()}
    return {"features": figures, "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def lines(results: dict) -> list[str]:
    out = ["Request path (single-row demand through the WSGI app in process, median us per call):"]
    for name, figure in results["features"].items():
        verdict = "MEETS" if figure["ratio"] <= CEILING else "MISSES"
        out.append(f"  {name}: on {figure['on_us']:.1f} us, off {figure['off_us']:.1f} us, "
                   f"x{figure['ratio']:.3f} ({verdict} <= x{CEILING})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--calls", type=int, default=CALLS)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args(argv)
    figures = run(args.rounds, args.calls)
    write_part(args.output, KEY, figures)
    print("\n".join(lines(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
