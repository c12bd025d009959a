"""Triton's statistics extension (GET /v2/models[/{name}[/versions/{v}]]/stats).

The oracle is what the test sends: a known number of good and bad inference requests, over REST
(v2 and TF Serving, through nginx to two gunicorn workers) and gRPC (separate processes), whose
counts and rows the statistics must sum exactly, read with tritonclient.http as a Triton user
would; durations are bounded by the round trips the test timed itself.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from service import create_app
from tests.conftest import front_door, latest_version

ROW = [25.0, 7.5, 2500.0, 5.5]
DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit")


def v2_body(rows: int, width: int = 4) -> dict:
    return {"inputs": [{"name": "features", "shape": [rows, width], "datatype": "FP32",
                        "data": (ROW * rows) if width == 4 else [1.0] * rows * width}]}


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """demand in versions 1 and 2 (the same graph), and digits."""
    root = tmp_path_factory.mktemp("stats-models")
    shutil.copytree(latest_version("demand"), root / "demand" / "1")
    shutil.copytree(latest_version("demand"), root / "demand" / "2")
    card = root / "demand" / "2" / "card.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "version": 2}))
    shutil.copytree(latest_version("digits"), root / "digits" / "1")
    return root


@pytest.fixture(scope="module")
def served(repository, tmp_path_factory):
    metrics_dir = tmp_path_factory.mktemp("metrics")
    with front_door(repository, workers=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as running:
        yield running, metrics_dir


class Sent:
    """What the test sent to one model version: requests by outcome, rows, summed round trips."""

    def __init__(self):
        self.success = self.fail = self.rows = 0
        self.round_trip_ns = 0

    def timed(self, call, rows: int, succeeds: bool) -> None:
        started = time.perf_counter_ns()
        ok = call()
        self.round_trip_ns += time.perf_counter_ns() - started
        assert ok == succeeds
        if succeeds:
            self.success += 1
            self.rows += rows
        else:
            self.fail += 1


def grpc_infer(client, values: np.ndarray, version: str) -> bool:
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    tensor = triton.InferInput("features", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    try:
        client.infer("demand", [tensor], model_version=version)
    except InferenceServerException as error:
        assert error.status() == "StatusCode.INVALID_ARGUMENT"
        return False
    return True


@pytest.fixture(scope="module")
def load(served):
    """The requests, sent: {version: Sent}, and the wall-clock span in ms since the epoch."""
    import tritonclient.grpc as triton

    running, _ = served
    url, sent = running.url, {"1": Sent(), "2": Sent()}
    first_ms = time.time() * 1000

    def rest(path: str, document: dict) -> bool:
        status = requests.post(f"{url}{path}", json=document, timeout=30).status_code
        assert status in (200, 400)
        return status == 200

    v1, v2 = "/v2/models/demand/versions/1/infer", "/v2/models/demand/infer"
    predict = "/v1/models/demand/versions/1:predict"
    jobs = (
        [(lambda: rest(v1, v2_body(1)), 1, True)] * 7
        + [(lambda: rest(v1, v2_body(4)), 4, True)] * 3
        + [(lambda: rest(predict, {"instances": [ROW, ROW]}), 2, True)] * 2
        + [(lambda: rest(v1, v2_body(1, width=3)), 1, False)] * 2  # wrong shape: 400
        + [(lambda: rest(predict, {"instances": [ROW[:3]]}), 1, False)]
    )
    # Four clients at once, so that both gunicorn workers answer some of them.
    with ThreadPoolExecutor(4) as pool:
        for _ in pool.map(lambda job: sent["1"].timed(*job), jobs):
            pass
    client = triton.InferenceServerClient(running.grpc)
    one, five, bad = (np.array([ROW] * n, np.float32) for n in (1, 5, 1))
    for _ in range(4):
        sent["1"].timed(lambda: grpc_infer(client, one, "1"), 1, True)
    sent["1"].timed(lambda: grpc_infer(client, five, "1"), 5, True)
    sent["1"].timed(lambda: grpc_infer(client, bad[:, :3].copy(), "1"), 1, False)
    for _ in range(2):  # no version: the highest, 2
        sent["2"].timed(lambda: rest(v2, v2_body(1)), 1, True)
    # Not counted: no model version to count them against.
    assert requests.post(f"{url}/v2/models/nope/infer", json=v2_body(1), timeout=30).status_code == 404
    return sent, first_ms, time.time() * 1000


@pytest.fixture(scope="module")
def http_client(served):
    import tritonclient.http as triton

    running, _ = served
    return triton.InferenceServerClient(running.url.removeprefix("http://"))


def check_version(stat: dict, name: str, version: str, sent: Sent, span: tuple[float, float]) -> None:
    assert (stat["name"], stat["version"]) == (name, version)
    assert set(stat["inference_stats"]) == set(DURATIONS)
    inference = stat["inference_stats"]
    assert inference["success"]["count"] == sent.success
    assert inference["fail"]["count"] == sent.fail
    assert stat["inference_count"] == sent.rows
    assert stat["execution_count"] == sent.success  # no batcher: one run per good request
    for key in ("compute_input", "compute_infer"):
        assert inference[key]["count"] == sent.success
    # Every duration the server measured lies within a round trip the test timed.
    measured = inference["success"]["ns"] + inference["fail"]["ns"]
    compute = inference["compute_input"]["ns"] + inference["compute_infer"]["ns"]
    assert 0 < compute < inference["success"]["ns"]
    assert inference["fail"]["ns"] > 0
    assert measured < sent.round_trip_ns
    assert span[0] - 1 <= stat["last_inference"] <= span[1] + 1
    for key in ("queue", "compute_output", "cache_hit"):
        assert inference[key] == {"count": 0, "ns": 0}
    assert stat["batch_stats"] == []


def test_statistics_sum_every_process_exactly(load, served, http_client):
    sent, first_ms, last_ms = load
    _, metrics_dir = served
    # The inference requests were answered by at least three processes: both gunicorn workers
    # and a gRPC process (each writes its own file of the Summary the statistics read).
    assert len(list(metrics_dir.glob("summary_*.db"))) >= 3
    answer = http_client.get_inference_statistics("demand", "1")
    (stat,) = answer["model_stats"]
    check_version(stat, "demand", "1", sent["1"], (first_ms, last_ms))


def test_every_reader_gets_the_same_totals(load, served):
    running, _ = served
    answers = {requests.get(f"{running.url}/v2/models/demand/versions/1/stats", timeout=10).text
               for _ in range(8)}
    assert len(answers) == 1  # whichever worker answers, the figures are the same


def test_without_a_version_every_loaded_version_is_listed(load, http_client):
    sent, first_ms, last_ms = load
    stats = http_client.get_inference_statistics("demand")["model_stats"]
    assert [stat["version"] for stat in stats] == ["1", "2"]
    assert stats[1]["inference_stats"]["success"]["count"] == sent["2"].success == 2
    assert stats[1]["inference_count"] == sent["2"].rows
    assert stats[1]["inference_stats"]["fail"]["count"] == 0


def test_every_model_and_untouched_ones_at_zero(load, http_client):
    sent, _, _ = load
    stats = {(s["name"], s["version"]): s for s in http_client.get_inference_statistics()["model_stats"]}
    assert list(stats) == [("demand", "1"), ("demand", "2"), ("digits", "1")]
    digits = stats["digits", "1"]
    assert digits["last_inference"] == digits["inference_count"] == digits["execution_count"] == 0
    assert all(value == {"count": 0, "ns": 0} for value in digits["inference_stats"].values())
    assert stats["demand", "1"]["inference_count"] == sent["1"].rows


@pytest.mark.parametrize("path, status", [
    ("/v2/models/nope/stats", 404),
    ("/v2/models/nope/versions/1/stats", 404),
    ("/v2/models/demand/versions/9/stats", 404),
    ("/v2/models/demand/versions/-1/stats", 404),
    ("/v2/models/demand/versions/x/stats", 404),
])
def test_unknown_models_and_versions_are_404(served, path, status):
    running, _ = served
    response = requests.get(f"{running.url}{path}", timeout=10)
    assert response.status_code == status
    assert "not found" in response.json()["error"]


def test_server_metadata_lists_the_extension(served, http_client):
    assert "statistics" in http_client.get_server_metadata()["extensions"]


# --- one process, the Flask test client (prometheus_client's in-process registry) --------------

def totals(client, path: str) -> tuple:
    (stat,) = client.get(path).get_json()["model_stats"]
    inference = stat["inference_stats"]
    return (inference["success"]["count"], inference["fail"]["count"], stat["inference_count"],
            stat["execution_count"])


def test_the_flask_test_client_counts_in_process(client):
    path = "/v2/models/demand/versions/1/stats"
    before = totals(client, path)
    assert client.post("/v2/models/demand/infer", json=v2_body(3)).status_code == 200
    assert client.post("/v1/models/demand:predict", json={"instances": [ROW]}).status_code == 200
    assert client.post("/v1/models/demand:explain", json={"instances": [ROW, ROW]}).status_code == 200
    assert client.post("/v2/models/demand/infer", json=v2_body(2, width=5)).status_code == 400
    assert client.get("/v2/models/demand").status_code == 200  # metadata: no inference
    after = totals(client, path)
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 1, 6, 3]


def test_a_version_that_did_not_load_is_503_and_left_out(tmp_path):
    shutil.copytree(latest_version("demand"), tmp_path / "demand" / "1")
    broken = tmp_path / "demand" / "2"
    shutil.copytree(latest_version("demand"), broken)
    (broken / "model.onnx").write_bytes(b"not a graph")
    client = create_app({"model_repository": tmp_path}).test_client()
    assert client.get("/v2/models/demand/versions/2/stats").status_code == 503
    stats = client.get("/v2/models/demand/stats").get_json()["model_stats"]
    assert [stat["version"] for stat in stats] == ["1"]
