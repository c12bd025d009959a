"""python -m service: the front door (nginx) and gunicorn, started, watched and stopped together.

nginx listens on SERVING_BIND and passes whole requests to gunicorn over a unix socket in a
private runtime folder; gunicorn's sync workers never wait on a client. SIGTERM or SIGINT stops
both gracefully: nginx first, which finishes what it holds (queued requests included), then
gunicorn, within SERVING_GRACEFUL_TIMEOUT in all; SIGHUP reloads
gunicorn's workers, which load the model repository (and the API keys) afresh; a keys file
that cannot be used refuses the reload instead (without a signal, every worker and gRPC process
also polls the repository every SERVING_POLL_INTERVAL seconds: service/repository/polling.py). When either
process dies, the other is stopped and the exit code says so.

The Open Inference Protocol over gRPC runs beside them on SERVING_GRPC_BIND: SERVING_WORKERS
processes of `python -m service.grpc.server` sharing the port (SO_REUSEPORT), each a fresh
interpreter, since gRPC must not be forked once a server exists (service/process/grpc_pool.py). One that
dies is replaced; SIGTERM stops them gracefully with the others; SIGHUP replaces them one at a
time, each new one serving before an old one stops. The launcher owns the Prometheus folder
(PROMETHEUS_MULTIPROC_DIR) that gunicorn's workers and the gRPC processes share, so /metrics
counts both.

SERVING_FRONT_DOOR=none runs gunicorn alone on SERVING_BIND (behind a buffering proxy of your
own), without the gRPC processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from service.process import grpc_pool, nginx
from service.rest import access
from service.settings import Settings

GUNICORN_CONFIG = Path(__file__).resolve().parent / "gunicorn.conf.py"
STARTUP_SECONDS = 120  # gunicorn's workers load every model before the socket answers


def gunicorn_command(*bind: str) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONFIG), *bind]


def find_nginx(program: str) -> str | None:
    # Debian installs nginx in /usr/sbin, which is not on an ordinary user's PATH.
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/local/sbin")


def wait_for_socket(path: Path, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def main() -> int:
    try:
        settings = Settings.load()
        access.Keys.load(settings)  # a keys file that cannot be used stops here, not in the workers
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if settings.front_door == "none":
        os.execv(sys.executable, gunicorn_command())
    program = find_nginx(settings.nginx)
    if program is None:
        print(f"error: {settings.nginx} is not installed: install Debian's nginx-light "
              "(apt-get install nginx-light), or set SERVING_FRONT_DOOR=none to run gunicorn "
              "alone behind a buffering proxy of your own", file=sys.stderr)
        return 2

    busy = grpc_pool.port_in_use(settings.grpc_bind)
    if busy:
        print(f"error: the gRPC address SERVING_GRPC_BIND is not free ({busy})", file=sys.stderr)
        return 2
    runtime = Path(tempfile.mkdtemp(prefix="serving-"))
    socket = runtime / "gunicorn.sock"
    config = runtime / "nginx.conf"
    text = nginx.render(settings, runtime, socket)
    if os.geteuid() == 0:  # nginx would hand its workers to `nobody`, who cannot reach the socket
        text = "user root root;\n" + text
    config.write_text(text)
    # Before any child starts: gunicorn's workers and the gRPC processes write their samples here.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(runtime / "metrics"))
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    os.environ["SERVING_BODY_FILES"] = str(runtime / "client-body")  # see service/process/nginx.py
    os.environ["SERVING_RUN_SLOTS"] = str(runtime / "runs")  # see service/core/limits.py
    os.makedirs(os.environ["SERVING_RUN_SLOTS"])
    # The health answers nginx gives (service/rest/health_files.py): a fresh folder, no stale answer.
    os.environ["SERVING_HEALTH_FILES"] = str(runtime / "health")
    os.makedirs(os.environ["SERVING_HEALTH_FILES"])
    children: dict[str, subprocess.Popen] = {}
    pool = grpc_pool.Pool(settings.workers)
    stopping = False
    relaying = None

    def forward(signum, _frame):
        nonlocal stopping
        if signum == signal.SIGHUP:
            try:  # new workers that cannot read the keys would stop gunicorn: keep the old ones
                access.Keys.load(settings)
            except ValueError as error:
                print(f"error: reload refused, the running processes keep serving: {error}", file=sys.stderr)
                return
            if "gunicorn" in children:
                children["gunicorn"].send_signal(signal.SIGHUP)
            pool.reload()
            return
        stopping = True
        pool.stop()
        # nginx first (SIGQUIT: it closes its port and finishes what it holds), gunicorn once nginx
        # is gone (watch: drain_then_stop): gunicorn stopping first turned the requests queued in
        # its backlog into nginx's 502s (measured: 64 of 13,776).
        front = children.get("nginx")
        if front is not None and front.poll() is None:
            front.send_signal(signal.SIGQUIT)
        elif "gunicorn" in children and children["gunicorn"].poll() is None:
            children["gunicorn"].send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        children["gunicorn"] = subprocess.Popen(gunicorn_command("--bind", f"unix:{socket}",
                                                                 *nginx.gunicorn_limits()))
        if not wait_for_socket(socket, children["gunicorn"]):
            print("error: gunicorn did not start; see its log above", file=sys.stderr)
            forward(signal.SIGTERM, None)
            return 1
        if not stopping:
            children["nginx"] = subprocess.Popen(
                [program, "-c", str(config), "-p", str(runtime), "-e", "stderr", "-g", "daemon off;"],
                stdout=subprocess.PIPE)
            relaying = threading.Thread(target=relay, args=(children["nginx"].stdout, sys.stdout.buffer),
                                        daemon=True)
            relaying.start()
        # After gunicorn is up: its on_starting empties the Prometheus folder.
        if not stopping and not pool.start() and not stopping:  # a SIGTERM may come while it starts
            print("error: the gRPC server did not start; see its log above", file=sys.stderr)
            forward(signal.SIGTERM, None)
            watch(children, lambda: True, forward, pool)
            return 1
        return watch(children, lambda: stopping, forward, pool)
    finally:
        pool.kill()
        for child in children.values():
            if child.poll() is None:
                child.kill()
        if relaying is not None:
            relaying.join(timeout=5)  # nginx's last lines: it has exited, its pipe ends
        shutil.rmtree(runtime, ignore_errors=True)


def relay(lines, out) -> None:
    """nginx's access-log lines onto the stdout gunicorn writes its own to. nginx can only open a
    path (/dev/stdout): with a fresh file offset, which gunicorn's writes would overwrite in a
    file not opened for appending, and not at all when stdout is a socket."""
    for line in lines:
        out.write(line)
        out.flush()


def watch(children: dict[str, subprocess.Popen], stopping, stop, pool: grpc_pool.Pool) -> int:
    """Until all have exited: when nginx or gunicorn dies unasked, stop the others; a gRPC process
    that dies is replaced (pool.tick); 0 only for a clean stop."""
    failed = None
    drained_by, signalled = None, set()
    while any(child.poll() is None for child in children.values()) or pool.alive():
        pool.tick()
        if stopping():
            drained_by = drained_by or time.monotonic() + Settings.load().graceful_timeout
            drain_then_stop(children, drained_by, signalled)
        for name, child in children.items():
            if child.poll() is not None and not stopping() and failed is None:
                failed = name
                print(f"error: {name} exited with code {child.returncode}; stopping", file=sys.stderr)
                stop(signal.SIGTERM, None)
        time.sleep(0.1)
    return 1 if failed else 0


def drain_then_stop(children: dict[str, subprocess.Popen], deadline: float, signalled: set) -> None:
    """While stopping: gunicorn gets SIGTERM once nginx has exited (nothing is left in flight then,
    so it stops at once); past the deadline (the graceful timeout) with nginx still finishing, both
    stop at once (nginx's SIGTERM, gunicorn's SIGQUIT), so that the whole stop stays within the
    graceful timeout, as before; each signal once."""
    front, back = children.get("nginx"), children.get("gunicorn")
    late = time.monotonic() > deadline
    if front is not None and front.poll() is None and late and "nginx" not in signalled:
        signalled.add("nginx")
        front.send_signal(signal.SIGTERM)
    if back is None or back.poll() is not None:
        return
    if late and "gunicorn late" not in signalled:
        signalled.add("gunicorn late")
        back.send_signal(signal.SIGQUIT)
    elif (front is None or front.poll() is not None) and "gunicorn" not in signalled:
        signalled.add("gunicorn")
        back.send_signal(signal.SIGTERM)

if __name__ == "__main__":
    sys.exit(main())
