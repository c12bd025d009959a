"""The front door's nginx configuration, written from the settings.

nginx reads whole requests (headers and body) before gunicorn sees them and writes whole
answers on gunicorn's behalf, so a slow, idle or never-reading client holds an nginx
connection (cheap, event-driven), never a sync worker. Clients are cut off after
`client_timeout` seconds without progress; kept-alive connections after `keepalive_timeout`.
nginx's own errors are JSON like the service's, with a request id, and nginx writes them to the
access log (its stdout, which the launcher relays to its own) as gunicorn does the app's answers.
Under load (docs/reliability.md, The front door under load): nginx stamps what it passes on with
the time, for the workers' queue budget; answers the health probes from files the workers keep,
never behind inference; and, when asked, bounds the requests it hands gunicorn at once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from service.rest.access import EXPOSED_HEADERS
from service.settings import Settings

# nginx's own answers, as the JSON errors the API promises ({"error": "..."}).
ERRORS = {
    400: "malformed HTTP request",
    404: "no such route",
    408: "the client sent the request too slowly",
    413: "request body is larger than the configured limit",
    414: "request line is too long",
    494: "request headers are too large",
    500: "internal error (front door)",
    502: "the service is not answering",
    503: "the service is not answering",
    504: "the service did not answer in time",
}
# 494 is nginx's own code for oversized headers; clients get a 400 (nginx's answer, too).
CLIENT_STATUS = {494: 400}
ERROR_PAGES = "/.front-door-errors/"
# Bodies of a million bytes or more (a batch of images) are handed to gunicorn as a file: nginx
# keeps them in one anyway, and a worker reads 3.5 MB from the page cache in about 0.2 ms of
# CPU, against 3.3 ms through the unix socket, with nginx spared reading the file back.
LARGE_BODY_DIGITS = 7
LARGE_BODIES = "/.front-door-large-bodies"
BODY_FILE_HEADER = "X-Front-Door-Body-File"  # service.rest.protocols.common.BODY_FILE
# When nginx passed the request on (its $msec), for the queue budget: service.rest.queue_budget.QUEUED_AT.
QUEUED_AT_HEADER = "X-Front-Door-Queued-At"
# Past SERVING_QUEUE_CONNECTIONS, nginx finds no upstream free and answers this 503 itself.
FULL = "the service is overloaded: too many requests are waiting for a worker; retry later"
RETRY_AFTER = 1  # seconds, as service.rest.queue_budget.RETRY_AFTER
HEALTH_PAGES = "/.front-door-health/"
# nginx reads a request's head into buffers of HEADER_BUFFER_BYTES: the request line, and each
# header line, must fit in one (else its 414, or 400), and the whole head in HEADER_BUFFERS of them.
HEADER_BUFFERS = 4
HEADER_BUFFER_BYTES = 8192  # nginx's default; gunicorn takes request lines of 8190 bytes at most
# The X-Request-ID a client may choose, as service.rest.app.CLIENT_ID (the app's, not imported: it
# would load onnxruntime into the launcher); nginx makes one up otherwise.
CLIENT_ID = r"[A-Za-z0-9._:@/+=-]{1,128}"
# nginx's own answers in the access log, the keys of service.process.access_log's: only printable ASCII
# is written as sent (the path still percent-encoded), as nginx cannot escape other bytes in JSON.
ACCESS_LOG = f"""map $request $front_door_method {{ "~^([A-Z]+) " $1; }}  # error pages are GETs
    map $request_uri $front_door_path {{ "~^([!-~]*?)(\\?[!-~]*)?$" $1; "~." "(not printable ASCII)"; }}
    map $request_uri $front_door_query {{ "~^[^?]*\\?([!-~]+)$" $1; }}
    map $request_time $front_door_ms {{ "~^0\\.0*([0-9]+)$" $1; "~^([0-9]+)\\.([0-9]+)$" $1$2; }}
    map $http_x_request_id $front_door_request_id {{
        default $request_id; "~^{CLIENT_ID}$" $http_x_request_id; }}
    map $http_user_agent $front_door_agent {{ "~^[ -~]+$" $http_user_agent; "~." "(not printable ASCII)"; }}
    log_format front_door escape=json '{{"time":"$time_iso8601","remote":"$remote_addr",'
        '"method":"$front_door_method","path":"$front_door_path","query":"$front_door_query",'
        '"status":$status,"bytes":$body_bytes_sent,"duration_ms":$front_door_ms,'
        '"request_id":"$front_door_request_id","user_agent":"$front_door_agent"}}';"""
PROXY_HEADERS = """proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header Connection "";"""


def proxy_headers(settings: Settings) -> str:
    """The headers nginx sets on what it passes on; with the queue budget on, when it did so
    (replacing any client's value); with it off, nothing more (docs/reliability.md)."""
    if not settings.queue_budget_ms:
        return PROXY_HEADERS
    return PROXY_HEADERS + f"\n            proxy_set_header {QUEUED_AT_HEADER} $msec;  # never the client's"


# nginx's default accept queue (511) overflows when a burst of clients connects at once (wrk's
# 1,024): a dropped SYN is sent again a second later, and a probe caught in it took 1.1 s. The
# kernel caps it at net.core.somaxconn (4096 on current kernels).
LISTEN_BACKLOG = 4096


def listen_directive(bind: str) -> str:
    host, _, port = bind.rpartition(":")
    if host in ("", "0.0.0.0", "*"):
        return f"listen {port} backlog={LISTEN_BACKLOG};"
    return f"listen {host}:{port} backlog={LISTEN_BACKLOG};"


def gunicorn_limits() -> list[str]:
    """gunicorn's options behind the front door: its limits let through whatever nginx passes on,
    as a request gunicorn refuses reaches neither the app nor the access log."""
    return [
        "--limit-request-line", str(HEADER_BUFFER_BYTES - 2),  # a line and its CRLF fill a buffer
        # nginx passes a header on as "name: value": a byte more than a "name:value" that filled one.
        "--limit-request-field_size", str(HEADER_BUFFER_BYTES + 1),
        # gunicorn's most: nginx's buffers hold fewer header lines, of 4 bytes at the least.
        "--limit-request-fields", "32768",
    ]


def cors(settings: Settings) -> tuple[str, str]:
    """nginx's own answers (a 413, a 502) with the CORS headers service.rest.access gives the app's,
    so that a page of a listed origin can read them too: (maps for the http block, add_header
    directives for the error pages), or nothing while SERVING_CORS_ORIGINS is unset."""
    if not settings.cors_origins:
        return "", ""
    if "*" in settings.cors_origins:
        allowed, vary = '"" ""; default "*";', ""
    else:  # regular expressions, as nginx compares a map's strings without regard to case
        allowed = 'default "";' + "".join(f' "~^{re.escape(origin)}$" $http_origin;'
                                          for origin in settings.cors_origins)
        vary = "add_header Vary Origin always; "
    maps = (f"map $http_origin $cors_allow_origin {{ {allowed} }}\n"
            f'    map $cors_allow_origin $cors_expose_headers {{ "" ""; default "{EXPOSED_HEADERS}"; }}')
    # An empty value adds no header: nothing for an origin that is not listed.
    return maps, (vary + "add_header Access-Control-Allow-Origin $cors_allow_origin always; "
                  "add_header Access-Control-Expose-Headers $cors_expose_headers always; ")


def render(settings: Settings, runtime: Path, upstream: Path) -> str:
    """nginx.conf for a runtime folder (pid, temporary files) and gunicorn's unix socket."""
    cors_maps, cors_headers = cors(settings)
    # URIs, not named locations: nginx cannot redirect a request whose line it could not parse
    # to a named location. `internal`: clients cannot ask for them.
    own = (f"internal; default_type application/json; client_max_body_size 0; "
           "access_log /dev/stdout front_door; add_header X-Request-ID $front_door_request_id always; "
           f"{cors_headers}")
    pages = "\n".join(
        f"        error_page {code} {ERROR_PAGES}{code};\n"
        f"        location = {ERROR_PAGES}{code} {{ {own}{full_upstream(code)}"
        f"return {CLIENT_STATUS.get(code, code)} '{json.dumps({'error': message})}'; }}"
        for code, message in ERRORS.items())
    timeout = settings.client_timeout
    return f"""# Written by service/process/nginx.py at start; edits are lost.
worker_processes 1;
pid {runtime}/nginx.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
    access_log off;  # gunicorn logs the answers it gives; the error pages below, nginx's own
    {ACCESS_LOG}
    server_tokens off;
    client_body_temp_path {runtime}/client-body;
    proxy_temp_path {runtime}/proxy;
    fastcgi_temp_path {runtime}/fastcgi;
    uwsgi_temp_path {runtime}/uwsgi;
    scgi_temp_path {runtime}/scgi;
    client_header_buffer_size 1k;
    large_client_header_buffers {HEADER_BUFFERS} {HEADER_BUFFER_BYTES // 1024}k;  # see gunicorn_limits
    client_header_timeout {timeout}s;
    client_body_timeout {timeout}s;
    send_timeout {timeout}s;
    keepalive_timeout {settings.keepalive_timeout}s;
    keepalive_requests 100000;
    client_max_body_size {settings.max_body_bytes};
    client_body_buffer_size 1m;  # larger bodies wait in a temporary file, not in gunicorn
    proxy_request_buffering on;
    proxy_buffering on;
    proxy_buffers 64 16k;
    proxy_read_timeout {settings.timeout + 5}s;
    proxy_http_version 1.0;  # sync workers close every connection: no upstream keep-alive
    upstream service {{ server unix:{upstream}{max_conns(settings)}; }}
    map $upstream_addr $front_door_retry_after {{ service {RETRY_AFTER}; default ""; }}
    map $content_length $large_body {{ default 0; "~^[0-9]{{{LARGE_BODY_DIGITS},}}$" 1; }}
    {cors_maps}
    server {{
        {listen_directive(settings.bind)}
        location / {{
            # In this location, not the server: nginx's error pages (internal redirects) must not
            # be rewritten. `rewrite ... last` is one of the two safe uses of `if` in a location.
            if ($large_body) {{ rewrite ^ {LARGE_BODIES}$uri last; }}
            proxy_pass http://service;
            {proxy_headers(settings)}
            proxy_set_header {BODY_FILE_HEADER} "";  # never the client's
        }}
        location ^~ {LARGE_BODIES}/ {{
            internal;
            client_max_body_size 0;  # checked in `location /` before the rewrite; a second check
                                     # would make the 413's error page recurse into nginx's HTML
            client_body_in_file_only clean;  # deleted when the answer is sent
            proxy_pass_request_body off;
            proxy_pass http://service$request_uri;
            {proxy_headers(settings)}
            proxy_set_header Content-Length "";
            proxy_set_header {BODY_FILE_HEADER} $request_body_file;
        }}
{health_locations(settings, runtime / "health", own, cors_headers)}
{pages}
    }}
}}
"""


def max_conns(settings: Settings) -> str:
    """The bound on requests handed to gunicorn at once (SERVING_QUEUE_CONNECTIONS per worker)."""
    if not settings.queue_connections:
        return ""
    return f" max_conns={settings.queue_connections * settings.workers}"


def full_upstream(code: int) -> str:
    """For the 502 page: when every upstream connection is taken (max_conns), nginx answers 502
    with its upstream's name as the address; that is overload, a 503 with Retry-After."""
    if code != 502:
        return ""
    # An add_header inside the `if` would drop the location's own (the request id): a map instead.
    return (f"add_header Retry-After $front_door_retry_after always; "
            f"if ($upstream_addr = service) {{ return 503 '{json.dumps({'error': FULL})}'; }} ")


def health_locations(settings: Settings, folder: Path, own: str, cors_headers: str) -> str:
    """/v2/health/live and /ready answered from the files the workers keep (service/rest/health_files.py),
    never waiting behind inference; from gunicorn while there are none yet, for other methods
    (its 405), and always when the probes need the API key (SERVING_PUBLIC_HEALTH=false)."""
    if not settings.public_health:
        return ""
    # error_page here replaces the server's, so they are all named again (a 413 by Content-Length).
    served = ("default_type application/json; access_log /dev/stdout front_door; etag off; "
              "add_header X-Request-ID $front_door_request_id always; "
              f"{cors_headers}root {folder}; error_page 405 = @service; ")
    pages = "".join(f"error_page {code} {ERROR_PAGES}{code}; " for code in ERRORS if code != 503)
    return f"""        location = /v2/health/live {{
            {served}
            {pages}error_page 503 {ERROR_PAGES}503;
            try_files /live.json @service;
        }}
        location = /v2/health/ready {{
            {served}
            {pages}error_page 503 {HEALTH_PAGES}not-ready.json;  # with its status: 503
            if (-f {folder}/not-ready.json) {{ return 503; }}
            try_files /ready.json @service;
        }}
        location ^~ {HEALTH_PAGES} {{ {own}alias {folder}/; }}
        location @service {{
            proxy_pass http://service;
            {proxy_headers(settings)}
            proxy_set_header {BODY_FILE_HEADER} "";
        }}"""
