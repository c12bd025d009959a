"""The queue budget's rules in the app (service/rest/queue_budget.py): which requests it refuses,
and the stamps it believes. Under real load, through nginx: tests/test_front_door_load.py."""

from __future__ import annotations

import json
import time

import pytest

from service import create_app
from tests.conftest import MODELS

ROW = json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                              "data": [25.0, 7.5, 2500.0, 5.5]}]})
STAMP = "X-Front-Door-Queued-At"


@pytest.fixture(scope="module")
def budget_client():
    return create_app({"model_repository": MODELS, "queue_budget_ms": 200}).test_client()


def stamp(seconds_ago: float) -> dict:
    return {STAMP: f"{time.time() - seconds_ago:.3f}"}


def infer(client, headers: dict, **environ):
    return client.post("/v2/models/demand/infer", data=ROW, content_type="application/json",
                       headers=headers, environ_base={"REMOTE_ADDR": "", **environ})


def test_a_request_that_waited_past_the_budget_is_refused_with_retry_after(budget_client):
    answer = infer(budget_client, stamp(1.0))
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    assert "over the queue budget of 200 ms" in answer.get_json()["error"]
    assert answer.headers["X-Request-ID"]


def test_a_request_within_the_budget_is_answered(budget_client):
    assert infer(budget_client, stamp(0.0)).status_code == 200


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/metrics"])
def test_health_and_metrics_are_never_refused(budget_client, path):
    answer = budget_client.get(path, headers=stamp(10.0), environ_base={"REMOTE_ADDR": ""})
    assert answer.status_code == 200, answer.data


@pytest.mark.parametrize(("headers", "remote"), [
    (stamp(10.0), "203.0.113.9"),  # a stamp over TCP (no front door of ours): not believed
    ({STAMP: "yesterday"}, ""),  # not a number
    ({}, ""),  # no stamp
], ids=["over-tcp", "not-a-number", "none"])
def test_only_the_front_doors_stamp_is_believed(budget_client, headers, remote):
    assert infer(budget_client, headers, REMOTE_ADDR=remote).status_code == 200


def test_with_the_budget_off_nothing_is_refused():
    client = create_app({"model_repository": MODELS, "queue_budget_ms": 0}).test_client()
    assert infer(client, stamp(60.0)).status_code == 200
