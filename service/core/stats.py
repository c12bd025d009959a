"""Triton's statistics extension: counts and durations per model version since the server started.

Read from the Prometheus samples that every process writes (service/core/metrics.py), so that the
figures are summed across gunicorn's workers and the gRPC processes, as /metrics is.
"""

from __future__ import annotations

from collections import defaultdict

from service.core import metrics

# The samples read, and the total each one adds to; requests are split by outcome.
TOTALS = {
    "serving_inference_request_duration_seconds_count": "requests",
    "serving_inference_request_duration_seconds_sum": "request_seconds",
    "serving_inference_duration_seconds_count": "executions",
    "serving_inference_duration_seconds_sum": "infer_seconds",
    "serving_input_preparation_seconds_total": "input_seconds",
    "serving_batch_size_rows_sum": "rows",
}
LAST_INFERENCE = "serving_last_inference_timestamp_seconds"


def totals() -> dict[tuple[str, str], dict[str, float]]:
    """{(model, version): {total: value}}, over every process."""
    found: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in metrics.current().collect():
        for sample in family.samples:
            labels = sample.labels
            if sample.name == LAST_INFERENCE:
                mine = found[labels["model"], labels["version"]]
                mine["last"] = max(mine["last"], sample.value)
            elif sample.name in TOTALS:
                key = TOTALS[sample.name]
                if "outcome" in labels:
                    key = f"{labels['outcome']}_{key}"
                found[labels["model"], labels["version"]][key] += sample.value
    return found


def duration(count: float, seconds: float) -> dict:
    return {"count": round(count), "ns": round(seconds * 1e9)}


def model_stat(name: str, version: str, total: dict[str, float]) -> dict:
    executions = total.get("executions", 0)
    nothing = duration(0, 0)
    return {
        "name": name,
        "version": version,
        "last_inference": round(total.get("last", 0) * 1000),  # ms since the epoch, 0 for never
        "inference_count": round(total.get("rows", 0)),
        "execution_count": round(executions),
        "inference_stats": {
            "success": duration(total.get("success_requests", 0), total.get("success_request_seconds", 0)),
            "fail": duration(total.get("fail_requests", 0), total.get("fail_request_seconds", 0)),
            "queue": nothing,  # no queue: a worker takes a request only when it can run it
            "compute_input": duration(executions, total.get("input_seconds", 0)),
            "compute_infer": duration(executions, total.get("infer_seconds", 0)),
            "compute_output": nothing,  # encoding happens in each protocol's codec: not measured
            "cache_hit": nothing,  # no response cache
        },
        # One series per batch size seen would be too many for Prometheus: /metrics has the
        # batch size histogram (serving_batch_size_rows) instead.
        "batch_stats": [],
    }


def statistics(wanted: list[tuple[str, int]]) -> dict:
    """The statistics of these (model, version) pairs."""
    found = totals()
    return {"model_stats": [model_stat(model, str(number), found.get((model, str(number)), {}))
                            for model, number in wanted]}
