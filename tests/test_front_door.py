"""The front door's small faults, each against a real gunicorn: malformed or oversized chunked
bodies, versions with a trailing newline, errors that would echo a client's large input, doubled
slashes with a foreign Host, and the 405 that /openapi.json must document."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from urllib.parse import urlsplit

import numpy as np
import pytest

from modelcard import forward
from service.process import nginx
from service.process.nginx import HEADER_BUFFER_BYTES, HEADER_BUFFERS
from tests.conftest import front_door, gunicorn, latest_version

ROW = [25.0, 7.5, 2500.0, 5.5]
GOOD = json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ROW}]})
LIMIT = 10000


@pytest.fixture(scope="module")
def door():
    with gunicorn(workers=1, SERVING_MAX_BODY_BYTES=str(LIMIT)) as running:
        yield running


def exchange(url: str, raw: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send raw bytes on a new connection; the status, headers and body of the answer."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as connection:
        connection.sendall(raw)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def chunked(path: str, chunks: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\nConnection: close\r\n{extra}\r\n").encode() + chunks


def good_answer_follows(door) -> None:
    status, _, body = exchange(door.url, (
        f"POST /v2/models/demand/infer HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(GOOD)}\r\nConnection: close\r\n\r\n{GOOD}").encode())
    assert status == 200
    expected = forward.Network.load(latest_version("demand")).predict(np.array([ROW]))
    assert abs(json.loads(body)["outputs"][0]["data"][0] - expected[0, 0]) <= 1e-6


@pytest.mark.parametrize("chunks", [
    b"zz\r\n" + GOOD.encode() + b"\r\n0\r\n\r\n",  # size not hexadecimal
    b"-5\r\n" + GOOD.encode() + b"\r\n0\r\n\r\n",  # negative size
    f"{len(GOOD):x}\r\n{GOOD}XX0\r\n\r\n".encode(),  # no CRLF after the chunk
    f"{len(GOOD):x}\r\n{GOOD}\r\n0\r\nbad trailer\r\n\r\n".encode(),  # a trailer that is no header
], ids=["size-zz", "size-negative", "missing-terminator", "bad-trailer"])
def test_malformed_chunks_are_a_400_without_a_traceback(door, chunks):
    status, headers, body = exchange(door.url, chunked("/v2/models/demand/infer", chunks))
    assert status == 400, body
    assert "error" in json.loads(body)
    assert "Traceback" not in door.log_text()
    good_answer_follows(door)


def test_a_well_formed_chunked_body_is_answered(door):
    chunks = f"{len(GOOD) - 10:x}\r\n{GOOD[:-10]}\r\na\r\n{GOOD[-10:]}\r\n0\r\n\r\n".encode()
    status, _, body = exchange(door.url, chunked("/v2/models/demand/infer", chunks))
    assert status == 200, body


def test_a_chunked_body_over_the_limit_is_a_413(door):
    size = LIMIT + 100
    payload = b'{"inputs": [' + b" " * (size - 13) + b"]"
    chunks = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n"
    status, _, body = exchange(door.url, chunked("/v2/models/demand/infer", chunks))
    assert status == 413, body
    good_answer_follows(door)


def test_a_version_with_a_trailing_newline_is_no_version(door):
    status, _, body = exchange(door.url, b"GET /v2/models/demand/versions/1%0A HTTP/1.1\r\n"
                                         b"Host: localhost\r\nConnection: close\r\n\r\n")
    assert status == 404, body


def test_errors_quote_only_a_short_prefix_of_what_was_sent(door):
    name = "x" * 4_000  # the body stays under the limit of this server
    document = json.dumps({"inputs": [{"name": name, "shape": [1, 4], "datatype": "FP32", "data": ROW}],
                           "outputs": [{"name": "y" * 4_000}]})
    raw = (f"POST /v2/models/demand/infer HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(document)}\r\nConnection: close\r\n\r\n{document}").encode()
    status, _, body = exchange(door.url, raw)
    assert status == 400 and len(body) < 300, body


def test_doubled_slashes_are_no_route_and_never_redirect_to_the_given_host(door):
    status, headers, _ = exchange(door.url, b"GET //v2//models//digits HTTP/1.1\r\n"
                                            b"Host: elsewhere.example\r\nConnection: close\r\n\r\n")
    assert status == 404
    assert "Location" not in headers


def test_openapi_documents_the_405_of_a_verb_asked_with_get(client):
    operation = client.get("/openapi.json").get_json()["paths"]["/v1/models/{name}/versions/{version}"]["get"]
    assert "405" in operation["responses"]
    assert client.get("/v1/models/demand/versions/1:predict").status_code == 405


# --- the front door itself: nginx in front of gunicorn, as `make serve` and the image run it -----

@pytest.fixture(scope="module")
def nginx_door():
    with front_door(workers=1, SERVING_MAX_BODY_BYTES=str(LIMIT)) as running:
        yield running


@pytest.mark.parametrize(("raw", "status", "message"), [
    (b"GARBAGE\r\n\r\n", 400, "malformed"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "too long"),
    (b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 400, "headers are too large"),
    (b"POST /v2/models/demand/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
     "malformed"),
    (b"POST /v2/models/demand/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413, "limit"),
    (b"GET /.front-door-errors/400 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "no such route"),
], ids=["garbage", "long-line", "big-header", "bad-chunk", "too-large", "error-page-itself"])
def test_the_front_doors_own_errors_are_json(nginx_door, raw, status, message):
    answer_status, headers, body = exchange(nginx_door.url, raw)
    assert answer_status == status, body
    assert headers["Content-Type"] == "application/json"
    assert message in json.loads(body)["error"]


def line_of(length: int) -> bytes:
    """A request line of this many bytes (without its CRLF)."""
    return b"GET /" + b"a" * (length - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"


def header_of(length: int, name: bytes = b"X-Big") -> bytes:
    """A header line of this many bytes (without its CRLF), written without a space after the colon."""
    return name + b":" + b"a" * (length - len(name) - 1)


LONGEST = HEADER_BUFFER_BYTES - 2  # a line and its CRLF fill one of nginx's buffers
V2 = b"GET /v2 HTTP/1.1"
LIMITS = {
    "longest-line": (line_of(LONGEST), [], 404),
    "line-too-long": (line_of(LONGEST + 1), [], 414),
    "longest-header": (V2, [header_of(LONGEST)], 200),
    "header-too-long": (V2, [header_of(LONGEST + 1)], 400),
    "many-headers": (V2, [b"X-%d: y" % n for n in range(150)], 200),  # gunicorn's own limit is 100
    # A header line never spans two buffers: one each, and then one too many.
    "buffers-full": (V2, [header_of(7000, b"X-%d" % n) for n in range(HEADER_BUFFERS)], 200),
    "buffers-over": (V2, [header_of(6000, b"X-%d" % n) for n in range(HEADER_BUFFERS + 1)], 400),
}


@pytest.mark.parametrize("case", LIMITS)
def test_what_nginx_passes_on_gunicorn_takes(nginx_door, case):
    """A request line and headers just under nginx's limits reach the app, which answers and logs
    them; just over, nginx refuses them. gunicorn, between the two, refuses nothing: its refusals
    reach neither the app nor the access log."""
    line, headers, status = LIMITS[case]
    request_id = f"limits-{case}"
    raw = b"\r\n".join([line, b"Host: x", f"X-Request-ID: {request_id}".encode(), *headers,
                         b"Connection: close"]) + b"\r\n\r\n"
    answer_status, answer_headers, body = exchange(nginx_door.url, raw)
    assert answer_status == status, body[:200]
    assert "Invalid request" not in nginx_door.log_text()  # gunicorn's warning when it refuses one
    # Logged, the app's answers by gunicorn and nginx's own by nginx, under the id of the answer:
    # the client's, unless nginx refused the request line before it read the headers.
    assert logged(nginx_door, answer_headers["X-Request-ID"])["status"] == status
    if case != "line-too-long":
        assert answer_headers["X-Request-ID"] == request_id
    if status not in (200, 404):  # nginx's own
        assert "too l" in json.loads(body)["error"]  # too long, too large


def logged(server, request_id: str) -> dict:
    """The access-log record of the request with this id (every line of the log is JSON or not
    JSON at all, and UTF-8)."""
    deadline = time.monotonic() + 5
    while f'"request_id":"{request_id}"' not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    server.log.seek(0)
    lines = server.log.read().decode("utf-8").splitlines()
    (record,) = [r for r in map(json.loads, (line for line in lines if line.startswith("{")))
                 if r["request_id"] == request_id]
    return record


@pytest.mark.parametrize(("raw", "fields"), [
    (b"POST /v2/models/demand/infer?x=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: probe/1\r\n"
     b"X-Request-ID: front-door-413\r\nContent-Length: 99999999\r\n\r\n",
     {"method": "POST", "path": "/v2/models/demand/infer", "query": "x=1", "status": 413,
      "user_agent": "probe/1", "remote": "127.0.0.1"}),
    (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\nUser-Agent: caf\xc3\xa9\r\nX-Request-ID: front-door-494\r\n"
     b"X-Big: " + b"a" * 20000 + b"\r\n\r\n",
     {"method": "GET", "path": "(not printable ASCII)", "query": "", "status": 400,
      "user_agent": "(not printable ASCII)"}),
    (b"GET /v2?q=%0A HTTP/1.1\r\nHost: x\r\nX-Request-ID: front-door-chunk\r\nTransfer-Encoding: chunked"
     b"\r\n\r\nzz\r\n", {"path": "/v2", "query": "q=%0A", "status": 400, "user_agent": ""}),
], ids=["body-too-large", "headers-too-large", "bad-chunk"])
def test_the_front_doors_own_answers_are_in_the_access_log(nginx_door, raw, fields):
    """One JSON line each, with the keys of gunicorn's lines; nginx writes only printable ASCII
    as sent (the path percent-encoded), as it cannot escape other bytes in JSON."""
    request_id = raw.split(b"X-Request-ID: ")[1].split(b"\r\n")[0].decode()
    status, headers, _ = exchange(nginx_door.url, raw)
    assert status == fields["status"] and headers["X-Request-ID"] == request_id
    record = logged(nginx_door, request_id)
    assert {key: record[key] for key in fields} == fields
    assert set(record) == {"time", "remote", "method", "path", "query", "status", "bytes", "duration_ms",
                           "request_id", "user_agent"}
    assert isinstance(record["duration_ms"], int) and record["bytes"] > 0


def test_a_request_id_nginx_makes_up_is_one_the_app_would_echo():
    from service.rest import app

    assert app.CLIENT_ID.pattern == nginx.CLIENT_ID


def test_keep_alive_answers_many_requests_on_one_connection(nginx_door):
    address = urlsplit(nginx_door.url)
    request = (f"POST /v2/models/demand/infer HTTP/1.1\r\nHost: localhost\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(GOOD)}\r\n\r\n{GOOD}").encode()
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        stream = connection.makefile("rb")
        for _ in range(20):
            connection.sendall(request)
            status_line = stream.readline()
            assert status_line.startswith(b"HTTP/1.1 200"), status_line
            length = 0
            while (line := stream.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                assert not (name.lower() == "connection" and "close" in value.lower())
            assert json.loads(stream.read(length))["outputs"][0]["name"] == "probability"


def test_sigterm_stops_nginx_and_gunicorn_gracefully():
    with front_door(workers=1) as running:
        children = running.descendants()
        assert len(children) >= 4  # nginx master and worker, gunicorn master and worker
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=40) == 0
        time.sleep(0.5)
        assert not [pid for pid in children if os.path.exists(f"/proc/{pid}")]


def test_a_body_shorter_than_its_content_length_is_a_400(door):
    address = urlsplit(door.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(b"POST /v2/models/demand/infer HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                           + GOOD[:10].encode())
        connection.shutdown(socket.SHUT_WR)  # the client is done sending: 90 bytes never come
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"ended after 10 of 100 bytes" in answer
    assert "Traceback" not in door.log_text()
    good_answer_follows(door)


def test_an_answer_given_before_the_body_is_read_arrives_whole(door):
    """A worker closes at once only when nothing is left unread (service/process/gunicorn.conf.py):
    here the body is never read (no such model), and closing over it would reset the
    connection and lose the answer."""
    body = b"x" * (LIMIT - 100)
    for _ in range(5):
        status, _, answer = exchange(door.url, (
            f"POST /v2/models/nowhere/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
        assert status == 404 and "not found" in json.loads(answer)["error"]
    good_answer_follows(door)


def test_the_access_log_names_the_client_behind_the_front_door(nginx_door):
    status, headers, _ = exchange(nginx_door.url, b"GET /v2/models/demand HTTP/1.1\r\nHost: x\r\n"
                                                  b"X-Request-ID: remote-check\r\nConnection: close\r\n\r\n")
    assert status == 200 and headers["X-Request-ID"] == "remote-check"
    time.sleep(0.2)
    lines = [json.loads(line) for line in nginx_door.log_text().splitlines() if line.startswith("{")]
    (record,) = [line for line in lines if line["request_id"] == "remote-check"]
    assert record["remote"] == "127.0.0.1"


@pytest.mark.parametrize(("raw", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /v2 HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(200)) + b"\r\n", 431),
], ids=["garbage", "long-line", "many-headers"])
def test_gunicorns_own_errors_are_json_without_the_front_door(door, raw, status):
    answer_status, headers, body = exchange(door.url, raw)
    assert answer_status == status, body
    assert headers["Content-Type"] == "application/json"
    assert len(json.loads(body)["error"]) <= 200
    good_answer_follows(door)
