"""gunicorn's access log as one JSON object per line, with the request id."""

from __future__ import annotations

import logging
import re
import time

import orjson
from gunicorn.glogging import Logger

# What a reader of the log must not take literally: control characters (C0, DEL, C1, among them
# U+0085, a line end to str.splitlines and others) and the Unicode line and paragraph separators.
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def client_text(value: str | None) -> str | None:
    """A WSGI string from the client (its bytes as latin-1) as the client meant it: UTF-8, with
    the bytes that are not UTF-8 and the characters UNPRINTABLE matches written as Python
    escapes (\\xff, \\n, \\x1b, \\u2028), and a backslash as two, so that every backslash in
    the log starts an escape."""
    if value is None or (value.isascii() and value.isprintable() and "\\" not in value):
        return value
    text = value.encode("latin-1").replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
    return UNPRINTABLE.sub(lambda found: ascii(found[0])[1:-1], text)


class JsonAccessLogger(Logger):
    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        headers = resp.headers.items() if hasattr(resp.headers, "items") else resp.headers
        request_id = next((value for name, value in headers if name.lower() == "x-request-id"), None)
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            # Behind the front door gunicorn's peer is a unix socket (no address): the client's
            # address is nginx's X-Real-IP, which only a local process could have set.
            "remote": environ.get("REMOTE_ADDR") or environ.get("HTTP_X_REAL_IP"),
            "method": environ.get("REQUEST_METHOD"),
            "path": client_text(environ.get("PATH_INFO")),  # percent-decoded bytes, as latin-1
            "query": client_text(environ.get("QUERY_STRING") or None),
            "status": int(status) if str(status).isdigit() else status,
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "request_id": request_id,
            "user_agent": client_text(environ.get("HTTP_USER_AGENT")),
        }
        self.write(orjson.dumps(record).decode())

    def write(self, line: str) -> None:
        """Straight to gunicorn's access-log streams: a LogRecord per request (caller lookup,
        formatting) costs several times the line itself. Other handlers get a record."""
        for handler in self.access_log.handlers:
            if type(handler) in (logging.StreamHandler, logging.FileHandler):
                with handler.lock:  # gunicorn swaps the stream under this lock on reopen (USR1)
                    handler.stream.write(line + "\n")
                    handler.stream.flush()
            else:
                handler.handle(self.access_log.makeRecord(
                    self.access_log.name, logging.INFO, __file__, 0, line, (), None))
