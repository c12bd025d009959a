"""The JSON access log (service/process/access_log.py) on a real gunicorn: one line of valid JSON per
request, whatever the client put in its path or headers, showing the path as the client meant it."""

from __future__ import annotations

import json
import time

import pytest

from service.process.access_log import client_text
from tests.conftest import gunicorn
from tests.test_front_door import exchange


@pytest.fixture(scope="module")
def server():
    with gunicorn(workers=1) as running:
        yield running


def logged(server, request_id: str) -> dict:
    """The access-log record of the request with this id, after checking that the whole log is
    valid UTF-8 and that no reader could split a line of it elsewhere than at a newline."""
    deadline = time.monotonic() + 5
    while request_id not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    server.log.seek(0)
    text = server.log.read().decode("utf-8")  # strict: a byte that is not UTF-8 fails here
    lines = text.removesuffix("\n").split("\n")
    assert text.splitlines() == lines
    records = [json.loads(line) for line in lines if line.startswith("{")]
    (record,) = [r for r in records if r["request_id"] == request_id]
    return record


@pytest.mark.parametrize(("target", "path"), [
    ("/v2/models/%E2%82%AC", "/v2/models/\u20ac"),  # UTF-8, percent-encoded
    ("/v2/models/caf%C3%A9%20cr%C3%A8me", "/v2/models/caf\u00e9 cr\u00e8me"),
    ("/v2/models/a%0Ab", "/v2/models/a\\nb"),  # a newline, as an escape
    ("/v2/models/a%0D%0A%7B%22status%22:200%7D", '/v2/models/a\\r\\n{"status":200}'),  # a forged line
    ("/v2/models/%1B%5B31mred", "/v2/models/\\x1b[31mred"),  # a terminal colour
    ("/v2/models/a%C2%85b", "/v2/models/a\\x85b"),  # U+0085, a line end to str.splitlines
    ("/v2/models/a%E2%80%A8b", "/v2/models/a\\u2028b"),  # the Unicode line separator
    ("/v2/models/a%FFb", "/v2/models/a\\xffb"),  # a byte that is not UTF-8
    ("/v2/models/a%5Cx41", "/v2/models/a\\\\x41"),  # a backslash: never mistaken for an escape
    ("/v2/models/plain", "/v2/models/plain"),
], ids=["euro", "accents", "newline", "forged-line", "escape", "nel", "line-separator", "not-utf8",
        "backslash", "plain"])
def test_the_path_is_logged_as_the_client_meant_it_on_one_line(server, target, path, request):
    request_id = f"path-{request.node.callspec.id}"
    status, _, _ = exchange(server.url, f"GET {target} HTTP/1.1\r\nHost: x\r\nX-Request-ID: {request_id}\r\n"
                                        "Connection: close\r\n\r\n".encode())
    assert status == 404
    assert logged(server, request_id)["path"] == path


def test_raw_bytes_in_a_header_are_logged_as_utf8_on_one_line(server):
    """Header values are bytes (a request target must be ASCII, and gunicorn refuses C0 controls
    in a header): a User-Agent in UTF-8 with U+2028 and U+0085, then bytes that are not UTF-8."""
    agent = "caf\u00e9 \u2028 \x85".encode() + b" \x85 \xff"
    status, _, _ = exchange(server.url, b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Request-ID: agent-check\r\n"
                                        b"User-Agent: " + agent + b"\r\nConnection: close\r\n\r\n")
    assert status == 200
    assert logged(server, "agent-check")["user_agent"] == "caf\u00e9 \\u2028 \\x85 \\x85 \\xff"


def test_a_query_is_logged_as_sent(server):
    status, _, _ = exchange(server.url, b"GET /v2?q=%0A%E2%82%AC&x=1 HTTP/1.1\r\nHost: x\r\n"
                                        b"X-Request-ID: query-check\r\nConnection: close\r\n\r\n")
    assert status == 200
    record = logged(server, "query-check")
    assert (record["path"], record["query"]) == ("/v2", "q=%0A%E2%82%AC&x=1")


def test_ordinary_text_is_returned_as_it_is():
    for text in ("/v2/models/demand/infer", "q=1&b=%20", "python-requests/2.32", None):
        assert client_text(text) is text
