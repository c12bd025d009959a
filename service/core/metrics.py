"""Prometheus metrics, correct across gunicorn workers, recorded by a hook of the data plane
(`Metrics`: runs, calls, versions loaded or refused).

gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before any worker imports this module; each
worker then writes its samples to files there and /metrics sums them. Without that
variable (the Flask test client, a single process) the default in-memory registry is used.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
    multiprocess,
)

from service.core.hooks import Hook
from service.core.types import Call, Inference

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

REQUESTS = Counter(
    "serving_requests_total", "Requests answered, by model, version, protocol and HTTP status.",
    ["model", "version", "protocol", "status"],
)
REQUEST_SECONDS = Histogram(
    "serving_request_duration_seconds", "Time from request to response, by protocol.",
    ["protocol"], buckets=LATENCY_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "serving_inference_duration_seconds", "Time inside onnxruntime, by model and version.",
    ["model", "version"], buckets=LATENCY_BUCKETS,
)
BATCH_ROWS = Histogram(
    "serving_batch_size_rows", "Rows per inference call, by model and version.", ["model", "version"],
    buckets=ROW_BUCKETS,
)
LOAD_FAILURES = Counter(
    "serving_model_load_failures_total",
    "Failed loads of a model version: one per process start, and one per change of its folder.",
    ["model", "version"],
)
# What the statistics extension reports (service/core/stats.py) beyond the above.
INFERENCE_REQUESTS = Summary(
    "serving_inference_request_duration_seconds",
    "Inference requests (v2 infer, TF Serving predict and explain, gRPC ModelInfer) by model, "
    "version and outcome (success: a 2xx or OK answer, else fail), and their time from request "
    "to response.", ["model", "version", "outcome"],
)
INPUT_SECONDS = Counter(
    "serving_input_preparation_seconds", "Time checking and converting inputs into the model's "
    "feeds, by model and version.", ["model", "version"],
)
LAST_INFERENCE = Gauge(
    "serving_last_inference_timestamp_seconds", "When the model version last answered an "
    "inference request, in seconds since the epoch.", ["model", "version"], multiprocess_mode="max",
)
MODEL_READY = Gauge(
    "serving_model_ready", "1 when the model version is loaded in every live worker, else 0.",
    ["model", "version"], multiprocess_mode="livemin",
)

RUN_LIMITS = Counter(
    "serving_run_limits_total", "Runs a limit refused or stopped (service/core/limits.py), by model, "
    "version and limit: time (stopped at its deadline, or not run past it), share (the model held "
    "all its long runs).", ["model", "version", "limit"],
)

# Under load (service/rest/queue_budget.py, service/grpc/threads.py): how long requests waited for
# a worker or a gRPC thread, and those refused for waiting too long.
QUEUE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
QUEUE_SECONDS = Histogram(
    "serving_queue_wait_seconds", "Time a request waited for a worker (REST: from the front door) or "
    "a gRPC thread, by protocol (rest, grpc).", ["protocol"], buckets=QUEUE_BUCKETS,
)
SHED_REQUESTS = Counter(
    "serving_shed_requests_total", "Requests refused for the queue: REST 503 from a worker, past "
    "SERVING_QUEUE_BUDGET_MS (nginx's own refusals are not counted here); gRPC RESOURCE_EXHAUSTED "
    "while calls waited past SERVING_GRPC_QUEUE_BUDGET_MS; by protocol.", ["protocol"],
)

# Label children are looked up once per label set: prometheus_client's labels() takes a lock
# and validates on every call, a measurable share of a sub-millisecond request.
@lru_cache(maxsize=4096)
def _request_children(model: str, version: str, protocol: str, status: str):
    return REQUESTS.labels(model, version, protocol, status), REQUEST_SECONDS.labels(protocol)


@lru_cache(maxsize=1024)
def _inference_children(model: str, version: str):
    return (INFERENCE_SECONDS.labels(model, version), BATCH_ROWS.labels(model, version),
            INPUT_SECONDS.labels(model, version))


@lru_cache(maxsize=1024)
def _inference_request_children(model: str, version: str, outcome: str):
    return INFERENCE_REQUESTS.labels(model, version, outcome), LAST_INFERENCE.labels(model, version)


def observe_request(model: str, version: str, protocol: str, status: str, seconds: float) -> None:
    count, duration = _request_children(model, version, protocol, status)
    count.inc()
    duration.observe(seconds)


def observe_inference(model: str, version: str, rows: int, input_seconds: float,
                      seconds: float) -> None:
    """One successful run of the model: its rows, the time preparing its inputs and inside it."""
    duration, batch, input_duration = _inference_children(model, version)
    duration.observe(seconds)
    batch.observe(rows)
    input_duration.inc(input_seconds)


def observe_inference_request(model: str, version: str, succeeded: bool, seconds: float) -> None:
    duration, last = _inference_request_children(model, version, "success" if succeeded else "fail")
    duration.observe(seconds)
    last.set(time.time())


def observe_limit(model: str, version: str, limit: str) -> None:
    RUN_LIMITS.labels(model, version, limit).inc()


class Metrics(Hook):
    """The data plane's hook: runs, calls, and versions loaded, unloaded or refused. The statistics
    extension (service/core/stats.py) reads what it records."""

    def after_run(self, inference: Inference) -> None:
        model = inference.model
        observe_inference(model.name, str(model.version), inference.rows, inference.input_seconds,
                          inference.run_seconds)

    def finished(self, call: Call, status: str, succeeded: bool) -> None:
        seconds = time.perf_counter() - call.started
        observe_request(call.model, call.version, call.protocol, status, seconds)
        if call.inference and call.model:  # a resolved model's inference call
            observe_inference_request(call.model, call.version, succeeded, seconds)

    def loaded(self, name: str, version: int) -> None:
        MODEL_READY.labels(name, str(version)).set(1)

    def unloaded(self, name: str, version: int) -> None:
        """It stays at 0: multiprocess mode cannot drop a sample another process may still write."""
        MODEL_READY.labels(name, str(version)).set(0)

    def refused(self, name: str, version: int, kept: bool) -> None:
        if not kept:
            MODEL_READY.labels(name, str(version)).set(0)
        LOAD_FAILURES.labels(name, str(version)).inc()


def current() -> CollectorRegistry:
    """Every process's samples, summed (multiprocess mode), or this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def exposition() -> tuple[bytes, str]:
    return generate_latest(current()), CONTENT_TYPE_LATEST
