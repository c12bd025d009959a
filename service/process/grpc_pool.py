"""The gRPC server processes, as the launcher (service/process/launcher.py) keeps them: spawned, watched,
replaced, reloaded and stopped. No grpc import here: the launcher never holds a gRPC server, and
each process is a fresh interpreter (`python -m service.grpc.server`), never a fork of one.

- start: `count` processes, one after another, each waited for until it serves (it writes a
  byte to a pipe once its server has started);
- tick (called by the launcher's watch loop): a process that died unasked is replaced; a
  requested reload replaces them one at a time, the new one serving before the old one is
  stopped, so that the port (shared with SO_REUSEPORT) keeps answering throughout;
- stop: SIGTERM to every process (each finishes its calls in flight, then exits).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time

STARTUP_SECONDS = 120  # the process loads every model before it serves
COMMAND = [sys.executable, "-m", "service.grpc.server"]


def mark_dead(pid: int) -> None:
    """Drop a dead process's live-gauge samples from the shared Prometheus folder."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def port_in_use(address: str) -> str | None:
    """Why the gRPC address cannot be ours, or None. The processes bind with SO_REUSEPORT, which
    would let them share a port silently with another service of the same user (a second `make
    serve`): a plain bind here, without it, fails when anything already listens there."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or None
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(where)
    except OSError as error:
        return f"{address}: {error.strerror or error}"
    return None


class Pool:
    def __init__(self, count: int, log=sys.stderr):
        self.count = count
        self.log = log
        self.processes: list[subprocess.Popen] = []
        self.stopping = False
        self.reload_wanted = False
        self.reap_later: list[subprocess.Popen] = []  # old processes of a reload, finishing

    def spawn(self) -> subprocess.Popen | None:
        """A new process, once it serves; None when it exited or hung before that."""
        read, write = os.pipe()
        try:
            process = subprocess.Popen([*COMMAND, "--ready-fd", str(write)], pass_fds=(write,))
        finally:
            os.close(write)
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while time.monotonic() < deadline and not self.stopping:
                ready, _, _ = select.select([read], [], [], 0.1)
                if ready:
                    if os.read(read, 1):
                        return process
                    break  # the pipe closed: the process exited before serving
        finally:
            os.close(read)
        if process.poll() is None:
            process.kill()
        process.wait()
        mark_dead(process.pid)
        if not self.stopping:
            print(f"error: a gRPC server process did not start (exit code {process.returncode})",
                  file=self.log)
        return None

    def start(self) -> bool:
        for _ in range(self.count):
            process = self.spawn()
            if process is None:
                return False
            self.processes.append(process)
        return True

    def reload(self) -> None:
        self.reload_wanted = True

    def tick(self) -> None:
        if self.stopping:
            return
        for index, process in enumerate(self.processes):
            if process.poll() is not None:
                mark_dead(process.pid)
                print(f"error: gRPC server process {process.pid} exited with code {process.returncode}; "
                      "starting another", file=self.log)
                replacement = self.spawn()
                if replacement is None:
                    return  # tried again on the next tick
                self.processes[index] = replacement
        if self.reload_wanted:
            self.reload_wanted = False
            for index, old in enumerate(list(self.processes)):
                new = self.spawn()
                if new is None:
                    print("error: reload of the gRPC servers stopped: a new process did not start; "
                          "the old ones keep serving", file=self.log)
                    return
                self.processes[index] = new
                old.send_signal(signal.SIGTERM)
                self.reap_later.append(old)

    def stop(self) -> None:
        self.stopping = True
        for process in self.processes + self.retired():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def retired(self) -> list[subprocess.Popen]:
        """Old processes of a reload, still finishing their calls."""
        still = [process for process in self.reap_later if process.poll() is None]
        for process in self.reap_later:
            if process not in still:
                mark_dead(process.pid)
        self.reap_later = still
        return still

    def alive(self) -> bool:
        return any(process.poll() is None for process in self.processes + self.retired())

    def kill(self) -> None:
        for process in self.processes + self.reap_later:
            if process.poll() is None:
                process.kill()
