"""The app around the protocols: its settings, request ids, metrics, the OpenAPI document, and
how it behaves when the model repository is partly broken, empty or missing."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from werkzeug.exceptions import HTTPException

from modelcard import forward
from service import create_app
from service.rest.routes import ROUTES, HotPath
from service.settings import Settings
from tests.conftest import MODELS, PARITY, latest_version, metric_value

HEX_ID = re.compile(r"[0-9a-f]{32}")
# Flask's rules for TF Serving's `name:verb` paths, and the paths they stand for.
VERB_RULES = {
    "/v1/models/{name_verb}": "/v1/models/{name}",
    "/v1/models/{name}/versions/{name_verb}": "/v1/models/{name}/versions/{version}",
}
VERBS = ("predict", "explain")


@pytest.fixture(scope="module")
def demand_rows():
    """The first rows of demand's test split, and the NumPy forward propagation's answer."""
    from training import data

    x = data.load("demand").test.x[:3]
    return x, forward.Network.load(latest_version("demand")).predict(x)


def infer_body(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}


def assert_demand_answers(client, demand_rows) -> None:
    x, expected = demand_rows
    response = client.post("/v2/models/demand/infer", json=infer_body(x))
    assert response.status_code == 200, response.get_json()
    [output] = response.get_json()["outputs"]
    actual = np.array(output["data"], dtype=np.float64).reshape(output["shape"])
    assert actual.shape == expected.shape
    assert np.max(np.abs(actual - expected)) <= PARITY


def client_for(repository) -> FlaskClient:
    return create_app({"model_repository": repository}).test_client()


def metric(client, name: str, **labels: str) -> float:
    response = client.get("/metrics")
    assert response.status_code == 200
    return metric_value(response.get_data(as_text=True), name, **labels)


# The app factory and its settings


def test_factory_serves_only_the_repository_it_is_given(tmp_path, demand_rows):
    shutil.copytree(MODELS / "demand", tmp_path / "demand")
    client = client_for(tmp_path)
    assert client.get("/v2/health/ready").status_code == 200
    assert_demand_answers(client, demand_rows)
    assert client.get("/v2/models/digits").status_code == 404
    assert client.get("/v1/models/digits").status_code == 404
    assert client.post("/v2/models/digits/infer", json=infer_body(np.zeros((1, 64)))).status_code == 404


def test_factory_honours_max_batch(demand_rows):
    client = create_app({"model_repository": MODELS, "max_batch": 2}).test_client()
    x, _ = demand_rows
    assert client.post("/v2/models/demand/infer", json=infer_body(x[:2])).status_code == 200
    response = client.post("/v2/models/demand/infer", json=infer_body(x[:3]))
    assert response.status_code == 413
    assert client.post("/v1/models/demand:predict", json={"instances": x[:3].tolist()}).status_code == 413


def test_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVING_MODEL_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("SERVING_MAX_BATCH", "7")
    monkeypatch.setenv("SERVING_MAX_BODY_BYTES", "1000")
    monkeypatch.setenv("SERVING_INTRA_OP_THREADS", "2")
    monkeypatch.setenv("SERVING_INTER_OP_THREADS", "3")
    monkeypatch.setenv("SERVING_LOG_LEVEL", "WARNING")
    settings = Settings.load()
    assert settings == Settings(model_repository=tmp_path, max_body_bytes=1000, max_batch=7,
                                intra_op_threads=2, inter_op_threads=3, log_level="warning")
    assert Settings.load({"max_batch": 5}).max_batch == 5  # the mapping given to the app wins


@pytest.mark.parametrize(("variable", "value"), [
    ("SERVING_MAX_BATCH", "0"),
    ("SERVING_MAX_BATCH", "many"),
    ("SERVING_MAX_BODY_BYTES", "1.5"),
    ("SERVING_INTRA_OP_THREADS", "-1"),
    ("SERVING_LOG_LEVEL", "loud"),
])
def test_an_invalid_setting_is_named(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        Settings.load()


def test_an_unknown_setting_is_named():
    with pytest.raises(ValueError, match="max_batches"):
        Settings.load({"max_batches": 3})


# Request ids


def test_request_id_is_echoed(client):
    response = client.get("/v2/health/live", headers={"X-Request-ID": "order-42.retry:1"})
    assert response.headers["X-Request-ID"] == "order-42.retry:1"


def test_request_id_is_generated_when_absent(client):
    first, second = (client.get("/v2/health/live").headers["X-Request-ID"] for _ in range(2))
    assert HEX_ID.fullmatch(first) and HEX_ID.fullmatch(second)
    assert first != second


# The test client refuses a newline in a header, so the ids go straight into the WSGI environ.
@pytest.mark.parametrize("given", ["two words", "line\nbreak", "trailing\n", "tab\there", "x" * 129])
def test_request_id_that_could_break_a_log_line_is_replaced(client, given):
    response = client.get("/v2/health/live", environ_overrides={"HTTP_X_REQUEST_ID": given})
    assert response.status_code == 200
    assert HEX_ID.fullmatch(response.headers.get("X-Request-ID", ""))


# Metrics


def test_metrics_are_prometheus_text(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert "# TYPE serving_requests_total counter" in response.get_data(as_text=True)


def demand_v2_requests(client, status: str) -> float:
    return metric(client, "serving_requests_total", model="demand", protocol="v2", status=status)


def test_request_counter_counts_each_request(client, demand_rows):
    x, _ = demand_rows
    ok, bad = demand_v2_requests(client, "200"), demand_v2_requests(client, "400")
    for _ in range(3):
        assert client.post("/v2/models/demand/infer", json=infer_body(x)).status_code == 200
    assert client.post("/v2/models/demand/infer", json={"inputs": []}).status_code == 400
    assert client.get("/v2/health/ready").status_code == 200  # probes are not counted
    assert demand_v2_requests(client, "200") - ok == 3
    assert demand_v2_requests(client, "400") - bad == 1


def test_batch_size_histogram_counts_rows(client, demand_rows):
    x, _ = demand_rows  # 3 rows: above the bucket le=2, within le=4

    def snapshot() -> list[float]:
        return [metric(client, "serving_batch_size_rows_count", model="demand"),
                metric(client, "serving_batch_size_rows_sum", model="demand"),
                metric(client, "serving_batch_size_rows_bucket", model="demand", le="2.0"),
                metric(client, "serving_batch_size_rows_bucket", model="demand", le="4.0")]

    before = snapshot()
    assert client.post("/v2/models/demand/infer", json=infer_body(x)).status_code == 200
    assert np.subtract(snapshot(), before).tolist() == [1, len(x), 0, 1]


# The OpenAPI document


def openapi_form(rule: str) -> list[str]:
    """A rule's OpenAPI paths: `{name}` for `<name>`, and TF Serving's verbs spelt out."""
    path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)
    return [f"{VERB_RULES[path]}:{verb}" for verb in VERBS] if path in VERB_RULES else [path]


def test_flask_serves_the_route_table_and_nothing_else(app):
    table = {(rule, route.method) for route in ROUTES for rule in route.rules}
    flask = {(rule.rule, method) for rule in app.url_map.iter_rules() if rule.endpoint != "static"
             for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert flask == table


def test_openapi_is_valid_and_describes_the_route_table(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    validate(document)
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == {(path, route.method.lower()) for route in ROUTES for rule in route.rules
                          for path in openapi_form(rule)}


@pytest.mark.parametrize("path", [
    "/v2/models/digits/infer", "/v2/models/digits/versions/1/infer", "/v2/models/a:b/versions/x/infer",
    "/v1/models/digits:predict", "/v1/models/digits/versions/1:explain", "/v1/models/x",
    "/v2/models/digits/infer/", "/v2/models//infer", "/v1/models/a/b/c:predict", "/v2/models/stats",
    "/v2/repository/index", "/v1/models/digits/versions/1/metadata",
])
def test_the_hot_path_takes_exactly_the_hot_rules_with_flasks_segments(app, path):
    """What the hot path answers, Flask would route to the same function with the same segments."""
    hot = HotPath(None, None)
    taken = [(pattern, function) for pattern, function in hot.patterns if pattern.fullmatch(path)]
    try:
        endpoint, segments = app.url_map.bind("localhost").match(path, method="POST")
    except HTTPException:  # no POST rule there: neither takes it
        assert taken == []
        return
    [route] = [route for route in ROUTES if route.endpoint == endpoint]
    if not route.hot:
        assert taken == []
        return
    [(pattern, hot_function)] = taken[:1]
    assert hot_function is route.function and pattern.fullmatch(path).groupdict() == segments


# A broken, an empty and a missing repository


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """The committed models with digits' model.onnx cut in half."""
    repository = tmp_path_factory.mktemp("broken") / "models"
    shutil.copytree(MODELS, repository)
    onnx = repository / "digits" / "1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    return client_for(repository)


def test_broken_model_makes_the_server_not_ready(broken):
    response = broken.get("/v2/health/ready")
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert "digits version 1" in error
    assert "demand" not in error and "digits-binary" not in error
    assert broken.get("/v2/health/live").status_code == 200


@pytest.mark.parametrize("path", ["/v2/models/digits/ready", "/v2/models/digits/versions/1/ready"])
def test_broken_model_is_not_ready(broken, path):
    response = broken.get(path)
    assert response.status_code == 503
    assert "digits" in response.get_json()["error"]


def test_other_models_still_answer(broken, demand_rows):
    assert_demand_answers(broken, demand_rows)
    assert broken.get("/v2/models/digits-binary/ready").status_code == 200


def test_broken_model_status_says_why(broken):
    response = broken.get("/v1/models/digits")
    assert response.status_code == 200
    [status] = response.get_json()["model_version_status"]
    assert (status["version"], status["state"]) == ("1", "END")
    assert status["status"]["error_code"] != "OK"
    assert "sha256" in status["status"]["error_message"]


@pytest.mark.parametrize("folder", ["empty", "missing"])
def test_a_repository_without_models_is_live_but_not_ready(tmp_path, folder):
    repository = tmp_path / folder
    if folder == "empty":
        repository.mkdir()
    client = client_for(repository)
    assert client.get("/v2/health/live").status_code == 200
    response = client.get("/v2/health/ready")
    assert response.status_code == 503
    assert str(repository) in response.get_json()["error"]
