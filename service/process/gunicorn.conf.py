"""gunicorn settings for the service, from service.settings.Settings (SERVING_* variables).

`python -m service` runs gunicorn with this file behind nginx, bound to a unix socket; run
alone (`gunicorn -c service/process/gunicorn.conf.py`), it binds SERVING_BIND. Each worker loads its own
onnxruntime sessions and polls the repository with a thread of its own (service/repository/polling.py), so
the app is never preloaded (a thread does not survive the fork); one worker per core by default.
Sync workers are the default: in `make bench`, gthread workers (keep-alive) matched their
requests/s but had a worse and less stable p99 (see README, Performance); behind nginx,
keep-alive is nginx's job.
"""

import atexit
import os
import shutil
import socket
import tempfile

import orjson
from gunicorn import util

from service.process.access_log import JsonAccessLogger
from service.settings import Settings

settings = Settings.load()
bind = settings.bind
workers = settings.workers
threads = settings.threads
worker_class = "gthread" if settings.threads > 1 else settings.worker_class
timeout = settings.timeout
graceful_timeout = settings.graceful_timeout
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = settings.log_level
logger_class = JsonAccessLogger
wsgi_app = "service:create_app()"
# No control socket (gunicornc): its default path is one per user ($XDG_RUNTIME_DIR/gunicorn.ctl,
# else ~/.gunicorn/gunicorn.ctl), so a second server takes it from the first, and the first one
# to stop removes it. Signals do all the service needs (HUP reloads, TERM stops), and the worker
# count stays the one SERVING_WORKERS sizes to the CPU limit.
control_socket_disable = True

# Prometheus multiprocess mode: every worker writes its samples under this folder, and
# /metrics sums them. It must be set before a worker imports prometheus_client. When none is
# given (gunicorn alone), the master makes one and removes it when it exits; MADE_HERE names it
# in the environment, which outlives this file: a reload (SIGHUP) runs the file again and must
# not take the folder for one given, and a master re-executed by USR2 inherits it.
MADE_HERE = "SERVING_METRICS_DIR_MADE"  # not a setting
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ[MADE_HERE] = tempfile.mkdtemp(prefix="serving-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[MADE_HERE]
metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server):
    """Samples of an earlier run would be summed in: start from an empty folder. At exit, not
    in gunicorn's on_exit, which a master that cannot bind its address never reaches."""
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.makedirs(metrics_dir, exist_ok=True)
    if os.environ.get(MADE_HERE) == metrics_dir:
        atexit.register(remove_made_folder, server)


def remove_made_folder(server):
    """The folder goes with the last master, as gunicorn's unix sockets do: not with a worker
    (forked, it inherits this), nor with a master whose successor (USR2) serves on, nor with a
    successor while the old master runs."""
    if os.getpid() == server.pid and server.reexec_pid == server.master_pid == 0:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def write_json_error(sock, status_int, reason, mesg):
    """gunicorn's own answers (a request it cannot parse, a line or headers too long) as the JSON
    errors the API promises, instead of its HTML page; the message cut short, as it may quote
    the client's bytes. Reached only without the front door, or for what nginx passes on."""
    body = orjson.dumps({"error": f"{reason.lower()}: {mesg}"[:200]})
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = write_json_error  # gunicorn's workers call util.write_error for these answers


# The whole body an early answer (a 404, 401, 413, the queue budget's 503) left unread is drained,
# not gunicorn's 64 KiB of it: closing with nginx still writing the rest makes nginx's write fail,
# and it answers 502 instead of the answer it was sent (2-6 of 20 early 404s with 64 KB-1 MB bodies
# measured). nginx has the whole body already, so the drain takes a few milliseconds at most.
MAX_DRAIN = settings.max_body_bytes + 65536  # the body and the head nginx passes on


def close_when_answered(sock, timeout=2.0, max_drain=MAX_DRAIN, graceful=util.close_graceful):
    """gunicorn lingers after every response until the peer closes, so that request bytes left
    unread cannot make the kernel reset the connection and cut the answer short (RFC 9112,
    9.6). When nothing is left unread there is nothing to protect: close at once. Behind
    nginx, the linger held each sync worker for about 30 % of its time (see README, Performance)."""
    try:
        unread = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        unread = b""
    except (OSError, ValueError):  # a broken socket, or TLS (no flags): the careful way
        unread = b"?"
    if unread:
        graceful(sock, timeout, max_drain)
    else:
        util.close(sock)


util.close_graceful = close_when_answered  # the sync and gthread workers call it after each answer
