"""What make bench and make soak share: the servers, their processes, and wrk to drive them.

- `front_door`: the service as users run it, `python -m service` (nginx on a loopback port in
  front of gunicorn on a unix socket);
- `gunicorn`: gunicorn alone on a loopback port, with any arguments (the baseline, the ceiling,
  or the service without its front door);
- `behind_front_door`: any WSGI app on gunicorn behind the same nginx, its configuration
  rendered by service.process.nginx.render and both processes started as service/process/launcher.py starts
  them (the raw-WSGI ceiling behind the front door).

Each yields a `Server` whose processes are found by walking /proc from the processes started:
gunicorn's workers are the children of its master, which under `python -m service` makes them
grandchildren of the process the bench launched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
STARTUP_SECONDS = 90


def write_part(output: Path, key: str, figures: dict) -> None:
    """One part's figures under `key` of the results file (bench/results.json), the others kept."""
    results = {}
    with contextlib.suppress(OSError, ValueError):
        results = json.loads(output.read_text())
    results[key] = figures
    output.write_text(json.dumps(results, indent=2, default=str) + "\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def digits_answer(url: str, log: Path) -> bool:
    """The default readiness test: a single-row v2 request to the digits model is answered 200."""
    body = (b'{"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": ['
            + b", ".join([b"0"] * 64) + b"]}]}")
    request = urllib.request.Request(f"{url}/v2/models/digits/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            answer.read()
            return answer.status == 200
    except OSError:
        return False


# --- processes --------------------------------------------------------------------------------

def _processes() -> dict[int, tuple[int, str]]:
    """Every process on the machine: pid -> (parent pid, command line)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), command.strip())
    return table


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user and system, every thread) used so far by these processes."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """CPU seconds since boot, all cores: (busy, total), from /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy / os.sysconf("SC_CLK_TCK"), (busy + idle + iowait) / os.sysconf("SC_CLK_TCK")


def others_busy(seconds: float = 1.0) -> float:
    """The share of the machine's CPU that its processes use over a second, while the bench idles."""
    before = machine_cpu()
    time.sleep(seconds)
    after = machine_cpu()
    return (after[0] - before[0]) / max(1e-9, after[1] - before[1])


def memory(pids: list[int]) -> list[dict]:
    """RSS and PSS (shared pages divided among their sharers) of each process, in MB."""
    figures = []
    for pid in pids:
        with contextlib.suppress(OSError):
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            kb = {key: int(value) for key, value in re.findall(r"^(Rss|Pss):\s+(\d+) kB", rollup, re.M)}
            figures.append({"pid": pid, "rss_mb": kb["Rss"] / 1024, "pss_mb": kb["Pss"] / 1024})
    return figures


@dataclass
class Server:
    url: str
    processes: list[subprocess.Popen]  # the ones started; everything else is found below them
    log: Path

    def descendants(self) -> dict[int, tuple[int, str]]:
        """pid -> (parent pid, command line) of every process started and every process below."""
        table = _processes()
        found = {p.pid: table[p.pid] for p in self.processes if p.pid in table}
        added = True
        while added:
            added = False
            for pid, (parent, command) in table.items():
                if parent in found and pid not in found:
                    found[pid] = (parent, command)
                    added = True
        return found

    def gunicorn_workers(self) -> list[int]:
        """gunicorn's workers: gunicorn processes whose parent is a gunicorn process (the master),
        at whatever depth below the processes started."""
        found = self.descendants()
        return sorted(pid for pid, (parent, command) in found.items()
                      if "gunicorn" in command and "gunicorn" in found.get(parent, (0, ""))[1])

    def nginx_processes(self) -> list[int]:
        """nginx's master and workers (none without a front door)."""
        return sorted(pid for pid, (_, command) in self.descendants().items() if command.startswith("nginx"))

    def worker_memory(self) -> list[dict]:
        return memory(self.gunicorn_workers())

    def settle(self, seconds: float = 30) -> None:
        """Until its processes are idle: ready to answer is not done starting (the service starts
        its gRPC processes once nginx and gunicorn answer)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pids = list(self.descendants())
            used = cpu_seconds(pids)
            time.sleep(0.5)
            if cpu_seconds(pids) - used < 0.02 and set(self.descendants()) == set(pids):
                return

    def tail(self, lines: int = 5) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return " | ".join(text.splitlines()[-lines:])


def _environment(environment: dict, bind: str) -> dict:
    env = {**os.environ, **environment, "SERVING_BIND": bind}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each gunicorn gets a metrics folder of its own
    return env


def _wait(server: Server, ready: Callable[[str, Path], bool], what: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while not ready(server.url, server.log):
        if any(p.poll() is not None for p in server.processes) or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start: {server.tail()}")
        time.sleep(0.2)
    server.settle()


def _stop(processes: list[subprocess.Popen], signals: list[int]) -> None:
    for process, signum in zip(processes, signals, strict=True):
        if process.poll() is None:
            process.send_signal(signum)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def front_door(environment: dict, log: Path, ready: Callable[[str, Path], bool] = digits_answer):
    """`python -m service` on a free loopback port, as `make serve` runs it; yielded once ready.
    Anything else it listens on (SERVING_GRPC_BIND, where the service has it) gets a free
    loopback port too, so that it never shares a port with another server on the machine."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _environment(environment, f"127.0.0.1:{port}")
    env.setdefault("SERVING_GRPC_BIND", f"127.0.0.1:{free_port()}")
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env,
                                   stdout=output, stderr=subprocess.STDOUT)
        server = Server(url, [process], log)
        try:
            _wait(server, ready, "python -m service")
            yield server
        finally:
            _stop([process], [signal.SIGTERM])  # it stops nginx and gunicorn gracefully


@contextlib.contextmanager
def gunicorn(arguments: list[str], environment: dict, log: Path,
             ready: Callable[[str, Path], bool] = digits_answer):
    """gunicorn alone on a free loopback port; yielded once ready(url, log) is true."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                                    *arguments], cwd=ROOT,
                                   env=_environment(environment, f"127.0.0.1:{port}"),
                                   stdout=output, stderr=subprocess.STDOUT)
        server = Server(url, [process], log)
        try:
            _wait(server, ready, "gunicorn")
            yield server
        finally:
            _stop([process], [signal.SIGTERM])


@contextlib.contextmanager
def behind_front_door(arguments: list[str], environment: dict, log: Path,
                      ready: Callable[[str, Path], bool] = digits_answer):
    """gunicorn with these arguments (an app and its workers) on a unix socket, behind the
    service's nginx: the configuration from service.process.nginx.render with the same settings, both
    started as service/process/launcher.py starts them."""
    from service.process import nginx
    from service.process.launcher import find_nginx
    from service.settings import Settings

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _environment(environment, f"127.0.0.1:{port}")
    settings = Settings.load(environ=env)
    program = find_nginx(settings.nginx)
    if program is None:
        raise RuntimeError(f"{settings.nginx} is not installed (apt-get install nginx-light)")
    runtime = Path(tempfile.mkdtemp(prefix="bench-front-door-"))
    upstream = runtime / "gunicorn.sock"
    text = nginx.render(settings, runtime, upstream)
    if os.geteuid() == 0:  # as service/process/launcher.py: nginx's workers must reach the socket
        text = "user root root;\n" + text
    (runtime / "nginx.conf").write_text(text)
    processes: list[subprocess.Popen] = []
    try:
        with open(log, "wb") as output:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--bind", f"unix:{upstream}", *arguments], cwd=ROOT,
                env=env, stdout=output, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + STARTUP_SECONDS
            while not upstream.exists():
                if processes[0].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not start: {Server(url, processes, log).tail()}")
                time.sleep(0.05)
            processes.append(subprocess.Popen(
                [program, "-c", str(runtime / "nginx.conf"), "-p", str(runtime), "-e", "stderr",
                 "-g", "daemon off;"], cwd=ROOT, stdout=output, stderr=subprocess.STDOUT))
            server = Server(url, processes, log)
            _wait(server, ready, "nginx and gunicorn")
            yield server
    finally:
        # nginx first, gracefully on SIGQUIT; then gunicorn, gracefully on SIGTERM
        _stop(processes[::-1], [signal.SIGQUIT, signal.SIGTERM][2 - len(processes):])
        shutil.rmtree(runtime, ignore_errors=True)


# --- load -------------------------------------------------------------------------------------

def wrk(url: str, body: Path, header_length: int | None, connections: int, seconds: int,
        server: Server | None = None) -> dict:
    """One wrk run POSTing body (a v2 binary request when header_length is given): requests,
    requests/s, p50 and p99 in µs, failures; with a server, the CPU µs per request of its
    gunicorn workers, of its nginx, and of wrk itself over the run; and the share of the
    machine's CPU that went to anything else (other processes: a busy machine, noisy figures)."""
    command = ["wrk", f"-t{min(connections, 2)}", f"-c{connections}", f"-d{seconds}s",
               "-s", str(BENCH / "wrk_post.lua"), url, "--", str(body)]
    if header_length is not None:
        command.append(str(header_length))
    if server is not None:
        workers, front = server.gunicorn_workers(), server.nginx_processes()
        before = cpu_seconds(workers), cpu_seconds(front)
    wrk_before, machine_before = resource.getrusage(resource.RUSAGE_CHILDREN), machine_cpu()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    wrk_after, machine_after = resource.getrusage(resource.RUSAGE_CHILDREN), machine_cpu()
    line = next(line for line in output.splitlines() if line.startswith("WRK_RESULT "))
    result = json.loads(line.removeprefix("WRK_RESULT "))
    result["requests_per_s"] = result["requests"] / (result["duration_us"] / 1e6)
    per_request = 1e6 / max(1, result["requests"])
    result["cpu_us_per_request"] = {"wrk": per_request * (
        wrk_after.ru_utime + wrk_after.ru_stime - wrk_before.ru_utime - wrk_before.ru_stime)}
    if server is not None:
        result["cpu_us_per_request"]["workers"] = per_request * (cpu_seconds(workers) - before[0])
        if front:
            result["cpu_us_per_request"]["nginx"] = per_request * (cpu_seconds(front) - before[1])
    busy, total = (machine_after[0] - machine_before[0], machine_after[1] - machine_before[1])
    measured = sum(result["cpu_us_per_request"].values()) / per_request
    result["machine"] = {"busy_share": busy / total,
                         "other_share": max(0.0, busy - measured) / total if server is not None else None}
    return result


def warm_up(url: str, body: bytes, count: int) -> int:
    """Exactly count requests, one at a time, so that memory can be read after a known number."""
    for _ in range(count):
        request = urllib.request.Request(f"{url}/v2/models/digits/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=5).read()
    return count


def medians(rounds: list[dict], rows: int) -> dict:
    """Medians of a scenario's rounds (wrk or h2load results): requests/s, rows/s, p50, p99 and
    CPU per request by part."""
    return {
        "requests_per_s": statistics.median(r["requests_per_s"] for r in rounds),
        "rows_per_s": statistics.median(r["requests_per_s"] for r in rounds) * rows,
        "p50_us": statistics.median(r["p50_us"] for r in rounds),
        "p99_us": statistics.median(r["p99_us"] for r in rounds),
        "cpu_us_per_request": {part: statistics.median(r["cpu_us_per_request"][part] for r in rounds)
                               for part in rounds[0]["cpu_us_per_request"]},
    }


class ClientThreads:
    """Threads running `target` (the subclass's `run` unless given) from entering the context
    until leaving it (`self.stopping` is set then)."""

    def __init__(self, threads: int, target: Callable[[], None] | None = None):
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=target or self.run) for _ in range(threads)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)
