"""service/process/gunicorn.conf.py on real gunicorn processes: what a server leaves on the machine, and
what two servers side by side must not share."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import MODELS, ROOT, free_port, gunicorn, wait_until_ready


def unix_sockets(pid: int) -> set[str]:
    """The paths of the unix sockets a process holds open (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes:
            paths.add(fields[7])
    return paths


def test_two_servers_at_once_share_no_control_socket(tmp_path):
    """gunicorn's control socket defaults to one path per user ($XDG_RUNTIME_DIR/gunicorn.ctl or
    ~/.gunicorn/gunicorn.ctl): the second server would take it from the first, and stopping
    either would remove the other's. The service runs none."""
    home, runtime = tmp_path / "home", tmp_path / "runtime"
    home.mkdir()
    runtime.mkdir()
    for variables in ({"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)},
                      {"HOME": str(home), "XDG_RUNTIME_DIR": ""}):
        with gunicorn(workers=1, **variables) as first, gunicorn(workers=1, **variables) as second:
            for server in (first, second):
                assert not unix_sockets(server.process.pid), "the master listens on a unix socket"
            assert not (home / ".gunicorn").exists() and list(runtime.iterdir()) == []


@contextlib.contextmanager
def gunicorn_alone(**environment):
    """`python -m service` with SERVING_FRONT_DOOR=none, which becomes gunicorn itself; yields
    (url, process) and stops it with SIGTERM, waiting for the exit."""
    url = f"http://127.0.0.1:{free_port()}"
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"SERVING_FRONT_DOOR": "none", "SERVING_BIND": url.removeprefix("http://"),
                "SERVING_WORKERS": "1", "SERVING_MODEL_REPOSITORY": str(MODELS), **environment})
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(url, process)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=60)


def metrics_folders(temporary: Path) -> list[Path]:
    return sorted(temporary.glob("serving-metrics-*"))


def test_gunicorn_alone_removes_the_metrics_folder_it_made(tmp_path):
    with gunicorn_alone(TMPDIR=str(tmp_path)) as (url, process):
        (folder,) = metrics_folders(tmp_path)
        requests.get(f"{url}/v2/models/demand", timeout=10)
        assert "serving_requests_total" in requests.get(f"{url}/metrics", timeout=10).text
        assert list(folder.iterdir()), "the worker writes its samples there"
        process.send_signal(signal.SIGHUP)  # a reload runs the config file again
        time.sleep(2)
        assert requests.get(f"{url}/v2/health/live", timeout=10).status_code == 200
        assert metrics_folders(tmp_path) == [folder]
    assert process.returncode == 0
    assert metrics_folders(tmp_path) == []


def test_gunicorn_alone_keeps_the_metrics_folder_it_was_given(tmp_path):
    given = tmp_path / "metrics"
    given.mkdir()
    with gunicorn_alone(TMPDIR=str(tmp_path), PROMETHEUS_MULTIPROC_DIR=str(given)) as (url, _):
        requests.get(f"{url}/v2/models/demand", timeout=10)
        assert list(given.iterdir()) and metrics_folders(tmp_path) == []
    assert given.is_dir()


def test_a_master_that_cannot_bind_removes_the_metrics_folder_it_made(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "TMPDIR": str(tmp_path), "SERVING_FRONT_DOOR": "none", "SERVING_WORKERS": "1",
               "SERVING_BIND": f"127.0.0.1:{taken.getsockname()[1]}"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        started = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=60)
    assert started.returncode != 0 and "Address already in use" in started.stderr
    assert metrics_folders(tmp_path) == []
