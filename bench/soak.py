"""make soak: two minutes of single-row v2 JSON at concurrency 32 on loopback, in 10-second windows.

Passes when no request failed, the median p99 of the last minute's windows is within 2x that
of the first minute's (a leak or a slowdown grows steadily; the machine is shared, so some
drift is noise), and the workers' resident memory grew by less than 10 %. Prints every window
and the verdict; exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.run import body_file, gunicorn, warm_up, worker_memory, wrk

P99_DRIFT = 2.0
MEMORY_GROWTH_PERCENT = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument("--seconds", type=int, default=10, help="per window")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        body, _ = body_file(folder, "v2", 1, "digits")
        with gunicorn(["--config", "service/gunicorn.conf.py"], {"SERVING_WORKERS": "2"},
                      folder / "service.log") as (url, process):
            warm_up(url, 1000)
            before = worker_memory(process)
            windows = []
            for number in range(1, args.windows + 1):
                result = wrk(url + "/v2/models/digits/infer", body, None, args.connections, args.seconds)
                windows.append(result)
                print(f"window {number:>2}: {result['requests_per_s']:7.0f} req/s  "
                      f"p50 {result['p50_us'] / 1000:5.2f} ms  p99 {result['p99_us'] / 1000:6.2f} ms  "
                      f"failed {result['non_2xx'] + result['socket_errors']}", flush=True)
            after = worker_memory(process)

    half = len(windows) // 2
    first = statistics.median(w["p99_us"] for w in windows[:half]) / 1000
    last = statistics.median(w["p99_us"] for w in windows[half:]) / 1000
    failed = sum(w["non_2xx"] + w["socket_errors"] for w in windows)
    total = sum(w["requests"] for w in windows)
    rss_before = statistics.mean(w["rss_mb"] for w in before)
    rss_after = statistics.mean(w["rss_mb"] for w in after)
    growth = 100 * (rss_after / rss_before - 1)
    checks = {
        f"failed requests {failed} of {total:,}": failed == 0,
        f"p99 first half {first:.2f} ms, second half {last:.2f} ms (x{last / first:.2f}, limit x{P99_DRIFT})":
            last <= P99_DRIFT * first,
        f"worker RSS {rss_before:.1f} MB -> {rss_after:.1f} MB ({growth:+.1f} %, limit "
        f"{MEMORY_GROWTH_PERCENT:.0f} %)": growth < MEMORY_GROWTH_PERCENT,
    }
    for text, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {text}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
