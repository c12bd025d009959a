"""The front door under load (docs/reliability.md, The front door under load), on a real
`python -m service`: the queue budget refuses with Retry-After while the answers it lets through
stay right, health is answered within 100 ms whatever the load, a graceful stop under load and
early errors with large bodies give no 502, and nginx's own errors are JSON.

Load comes from wrk (as `make bench`), bounded to a few seconds."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from modelcard import forward
from service.process.nginx import ERROR_PAGES, LARGE_BODIES
from tests.conftest import front_door, latest_version, metric_value

ROW = [25.0, 7.5, 2500.0, 5.5]
SCRIPT = """
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args)
  wrk.method = "POST"
  wrk.body = '{"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", '
    .. '"data": [25.0, 7.5, 2500.0, 5.5]}]}'
  wrk.headers["Content-Type"] = "application/json"
  other = 0
end
response = function(status, headers, body)
  if status ~= 200 and status ~= 503 then other = other + 1 end
end
done = function(summary, latency, requests)
  local others = 0
  for _, thread in ipairs(threads) do others = others + thread:get("other") end
  io.write(string.format("WRK %d %d\\n", summary.requests, others))
end
"""


@pytest.fixture(scope="module")
def demand():
    return forward.Network.load(latest_version("demand"))


@pytest.fixture(scope="module")
def budget_door():
    """One worker and a queue budget of 50 ms: 256 connections overrun it."""
    with front_door(workers=1, SERVING_QUEUE_BUDGET_MS="50") as running:
        yield running


@pytest.fixture(scope="module")
def door():
    """The defaults, as `make serve` runs."""
    with front_door(workers=2) as running:
        yield running


def load(url: str, connections: int, seconds: int, tmp_path) -> subprocess.Popen:
    """wrk on single-row demand inference, in the background; wrk_result() reads what it did."""
    script = tmp_path / "load.lua"
    script.write_text(SCRIPT)
    return subprocess.Popen(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
                             f"{url}/v2/models/demand/infer"], stdout=subprocess.PIPE, text=True)


def wrk_result(process: subprocess.Popen) -> tuple[int, int]:
    """(requests answered, of them with a status other than 200 and the queue budget's 503)."""
    output, _ = process.communicate(timeout=60)
    line = next(line for line in output.splitlines() if line.startswith("WRK "))
    requests, failed = line.split()[1:]
    return int(requests), int(failed)


def call(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One request on a new connection: (status, headers, body, seconds)."""
    address = urlsplit(url)
    started = time.perf_counter()
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        data = answer.read()
        return answer.status, dict(answer.getheaders()), data, time.perf_counter() - started
    finally:
        connection.close()


def infer(url: str, row: list[float]):
    document = json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                       "data": row}]}).encode()
    return call(url, "POST", "/v2/models/demand/infer", document, {"Content-Type": "application/json"})


def test_the_queue_budget_refuses_with_retry_after_and_what_it_lets_through_is_right(budget_door, demand,
                                                                                      tmp_path):
    door = budget_door
    rng = np.random.default_rng(24)
    rows = (np.array(ROW) * rng.uniform(0.5, 1.5, size=(400, 4))).astype(np.float32)
    wrk = load(door.url, 256, 4, tmp_path)
    time.sleep(1)  # the backlog builds up past the budget
    readiness, liveness = [], []

    def probe():
        while wrk.poll() is None:
            readiness.append(call(door.url, "GET", "/v2/health/ready")[:3])
            liveness.append(call(door.url, "GET", "/v2/health/live")[0])
            time.sleep(0.1)

    prober = threading.Thread(target=probe)
    prober.start()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda row: infer(door.url, row.tolist()), rows))
    wrk_result(wrk)
    prober.join()
    refused = [answer for answer in answers if answer[0] == 503]
    accepted = [(row, answer) for row, answer in zip(rows, answers, strict=True) if answer[0] == 200]
    assert {answer[0] for answer in answers} <= {200, 503}
    assert refused and accepted, (len(refused), len(accepted))
    for _, headers, body, _ in refused:
        assert headers["Retry-After"] == "1"
        assert "queue budget" in json.loads(body)["error"]
    expected = demand.predict(np.array([row for row, _ in accepted], dtype=np.float64))
    served = [json.loads(answer[2])["outputs"][0]["data"][0] for _, answer in accepted]
    np.testing.assert_allclose(served, expected[:, 0], rtol=1e-5)
    # Readiness said it shed load (503 with the reason) while liveness stayed 200.
    assert set(liveness) == {200}
    shedding = [json.loads(body) for status, _, body in readiness if status == 503]
    assert shedding and all(not doc["ready"] and "shedding" in doc["error"] for doc in shedding)
    deadline = time.monotonic() + 5  # ready again once the spike is over
    while call(door.url, "GET", "/v2/health/ready")[0] != 200:
        assert time.monotonic() < deadline, "still not ready 5 s after the load stopped"
        time.sleep(0.2)
    metrics = call(door.url, "GET", "/metrics")[2].decode()
    assert "serving_queue_wait_seconds_bucket" in metrics
    assert metric_value(metrics, "serving_shed_requests_total", protocol="rest") >= len(refused)


def test_a_clients_own_stamp_never_reaches_the_app(budget_door):
    door = budget_door
    document = json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                       "data": ROW}]}).encode()
    status, _, body, _ = call(door.url, "POST", "/v2/models/demand/infer", document,
                              {"Content-Type": "application/json", "X-Front-Door-Queued-At": "1.000"})
    assert status == 200, body


def test_health_is_answered_within_100_ms_at_1024_connections(door, tmp_path):
    wrk = load(door.url, 1024, 5, tmp_path)
    time.sleep(1)
    answers = []
    while wrk.poll() is None:
        for path in ("/v2/health/live", "/v2/health/ready"):
            answers.append((path, *call(door.url, "GET", path)))
        time.sleep(0.05)
    requests, _ = wrk_result(wrk)
    assert requests > 1000  # the load was real
    assert len(answers) > 20
    # Within 100 ms, but nginx needs a CPU too: on a machine shared with other work, a probe now
    # and then waits for one (up to 250 ms at a load average of 6 on 2 cores; before nginx
    # answered them, the median was 210-513 ms). So: 95 % within 100 ms, every one within 1 s
    # (a Kubernetes probe's default timeout).
    times = sorted(seconds for *_, seconds in answers)
    assert times[int(len(times) * 0.95)] < 0.1, f"p95 {times[int(len(times) * 0.95)] * 1000:.0f} ms"
    assert times[-1] < 1, f"slowest {times[-1] * 1000:.0f} ms"
    for path, status, _, body, _ in answers:
        if path.endswith("live"):
            assert (status, json.loads(body)) == (200, {"live": True})
        elif status != 200:  # a loaded machine may wait past the default budget: then it sheds
            assert status == 503 and "shedding" in json.loads(body)["error"], body


def test_a_graceful_stop_under_load_turns_no_queued_request_into_a_502(tmp_path):
    with front_door(workers=2) as door:
        wrk = load(door.url, 256, 6, tmp_path)
        time.sleep(2)
        door.process.send_signal(signal.SIGTERM)
        assert door.process.wait(timeout=60) == 0
        requests, failed = wrk_result(wrk)
        assert requests > 500
        assert failed == 0, f"{failed} of {requests} answers were neither 200 nor 503 (502s)"
        assert '"status": 502' not in door.log_text() and '"status":502' not in door.log_text()


def test_early_errors_with_large_bodies_are_never_502():
    key = "secret-key-for-tests"
    early = [("/v2/models/nosuch/infer", {"Authorization": f"Bearer {key}"}, 404),  # no such model
             ("/v2/models/demand/infer", {}, 401)]  # no key
    tries = [(size, path, headers, status) for size in (64 * 1024, 512 * 1024, 1024 * 1024)
             for _ in range(20) for path, headers, status in early]
    with front_door(workers=2, SERVING_API_KEYS=key) as keyed, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda t: call(keyed.url, "POST", t[1], b" " * t[0],
                                               {"Content-Type": "application/json", **t[2]}), tries))
    wrong = [(size, status, answer[0]) for (size, _, _, status), answer in zip(tries, answers, strict=True)
             if answer[0] != status]
    assert not wrong, wrong
    assert all("error" in json.loads(answer[2]) for answer in answers)


def test_nginxs_413_by_content_length_is_json_on_every_path(budget_door):
    for path in (f"{ERROR_PAGES}413", f"{LARGE_BODIES}/v2/models/demand/infer", "/v2/health/live",
                 "/v2/health/ready", "/v2/models/demand/infer"):
        raw = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\nConnection: close\r\n\r\n"
        status, headers, body = answer_of(budget_door.url, raw.encode())
        assert status == (404 if path.startswith("/.") else 413), (path, body)  # internal: no route
        assert headers["Content-Type"] == "application/json", path
        assert "error" in json.loads(body)


def answer_of(url: str, raw: bytes) -> tuple[int, dict, bytes]:
    """Send raw bytes; the answer, read up to its Content-Length: nginx may keep the connection
    open to discard a body that never comes."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as connection:
        connection.sendall(raw)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        while len(body) < int(headers["Content-Length"]):
            body += connection.recv(65536)
    return int(lines[0].split()[1]), headers, body


def test_health_survives_a_killed_worker(door):
    """The health files stay: the other worker keeps them, and gunicorn replaces the killed one."""
    assert call(door.url, "GET", "/v2/health/ready")[:3:2] == (200, b'{"ready":true}')
    os.kill(gunicorn_workers(door)[0], signal.SIGKILL)
    for _ in range(20):
        status, _, body, seconds = call(door.url, "GET", "/v2/health/live")
        assert (status, body) == (200, b'{"live":true}') and seconds < 1
        time.sleep(0.05)
    assert call(door.url, "GET", "/v2/health/ready")[0] == 200


def gunicorn_workers(server) -> list[int]:
    """Processes below the server whose parent is gunicorn's master."""
    def command(pid: int) -> bytes:
        return Path(f"/proc/{pid}/cmdline").read_bytes()

    def parent(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    return [pid for pid in server.descendants()
            if b"gunicorn" in command(pid) and b"gunicorn" in command(parent(pid))]
