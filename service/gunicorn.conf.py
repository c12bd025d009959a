"""gunicorn settings for the service: `gunicorn -c service/gunicorn.conf.py "service:create_app()"`.

Each worker loads its own onnxruntime sessions (no preload), one worker per core by default.
Override with SERVING_WORKERS, SERVING_THREADS, SERVING_WORKER_CLASS, SERVING_BIND, SERVING_TIMEOUT.
Sync workers are the default: in `make bench`, gthread workers (keep-alive) matched their
requests/s but had a worse and less stable p99 (see README, Performance).
"""

import os
import shutil
import tempfile

from service.access_log import JsonAccessLogger

bind = os.environ.get("SERVING_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("SERVING_WORKERS", os.cpu_count() or 1))
threads = int(os.environ.get("SERVING_THREADS", "1"))
worker_class = os.environ.get("SERVING_WORKER_CLASS", "gthread" if threads > 1 else "sync")
timeout = int(os.environ.get("SERVING_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("SERVING_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("SERVING_LOG_LEVEL", "info")
logger_class = JsonAccessLogger
wsgi_app = "service:create_app()"

# Prometheus multiprocess mode: every worker writes its samples under this folder, and
# /metrics sums them. It must be set before a worker imports prometheus_client.
metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="serving-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir


def on_starting(server):
    """Samples of an earlier run would be summed in: start from an empty folder."""
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.makedirs(metrics_dir, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

