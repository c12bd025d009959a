"""make soak: two minutes of single-row v2 JSON at concurrency 32, front door on, in 10-second windows.

The service runs as users run it, `python -m service` (nginx in front of gunicorn, 2 sync
workers). Passes when no request failed, the median p99 of the last minute's windows is within
2x that of the first minute's (a leak or a slowdown grows steadily; the machine may be shared,
so some drift is noise), and the resident memory of gunicorn's workers (grandchildren of the
process started, found below it in /proc) grew by less than 10 %. nginx's memory is printed
beside it. Prints every window and the verdict; exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.harness import front_door, memory, warm_up, wrk
from bench.run import body_file

P99_DRIFT = 2.0
MEMORY_GROWTH_PERCENT = 10.0
WORKERS = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument("--seconds", type=int, default=10, help="per window")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        body, _ = body_file(folder, "v2", 1, "digits")
        with front_door({"SERVING_WORKERS": str(WORKERS)}, folder / "service.log") as server:
            warm_up(server.url, body.read_bytes(), 1000)
            workers, front = server.gunicorn_workers(), server.nginx_processes()
            if len(workers) != WORKERS or not front:
                print(f"FAIL found {len(workers)} gunicorn workers (expected {WORKERS}) and "
                      f"{len(front)} nginx processes below python -m service")
                return 1
            print(f"python -m service on {server.url}: gunicorn workers {workers}, nginx {front}",
                  flush=True)
            before, nginx_before = memory(workers), memory(front)
            windows = []
            for number in range(1, args.windows + 1):
                result = wrk(server.url + "/v2/models/digits/infer", body, None, args.connections,
                             args.seconds)
                windows.append(result)
                print(f"window {number:>2}: {result['requests_per_s']:7.0f} req/s  "
                      f"p50 {result['p50_us'] / 1000:5.2f} ms  p99 {result['p99_us'] / 1000:6.2f} ms  "
                      f"failed {result['non_2xx'] + result['socket_errors']}", flush=True)
            after, nginx_after = memory(workers), memory(front)
            replaced = sorted(set(server.gunicorn_workers()) - set(workers))

    half = len(windows) // 2
    first = statistics.median(w["p99_us"] for w in windows[:half]) / 1000
    last = statistics.median(w["p99_us"] for w in windows[half:]) / 1000
    failed = sum(w["non_2xx"] + w["socket_errors"] for w in windows)
    total = sum(w["requests"] for w in windows)
    rss_before = statistics.mean(w["rss_mb"] for w in before)
    rss_after = statistics.mean(w["rss_mb"] for w in after) if len(after) == len(before) else float("inf")
    growth = 100 * (rss_after / rss_before - 1)
    checks = {
        f"failed requests {failed} of {total:,}": failed == 0,
        f"p99 first half {first:.2f} ms, second half {last:.2f} ms (x{last / first:.2f}, limit x{P99_DRIFT})":
            last <= P99_DRIFT * first,
        f"gunicorn worker RSS {rss_before:.1f} MB -> {rss_after:.1f} MB ({growth:+.1f} %, limit "
        f"{MEMORY_GROWTH_PERCENT:.0f} %)": growth < MEMORY_GROWTH_PERCENT,
        f"the same {len(workers)} workers throughout"
        + (f" (replaced by {replaced})" if replaced else ""): not replaced,
    }
    for text, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {text}")
    print(f"     nginx RSS (master and worker) {sum(m['rss_mb'] for m in nginx_before):.1f} MB -> "
          f"{sum(m['rss_mb'] for m in nginx_after):.1f} MB")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
