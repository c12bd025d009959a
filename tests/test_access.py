"""Access control (service/rest/access.py): API keys on REST and gRPC, the CORS allow-list, form bodies
refused while either is on, and keys kept out of every log. The middleware is tested on a trivial
WSGI app; the service's behaviour on real servers: the front door (nginx, gunicorn and the gRPC
processes) as `make serve` runs it, and gunicorn alone."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from werkzeug.test import Client
from werkzeug.wrappers import Response

from modelcard import forward
from service.rest.access import AccessControl, Keys, middleware
from service.settings import Settings
from tests.conftest import MODELS, ROOT, front_door, gunicorn, latest_version
from tests.test_front_door import exchange

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "second.key_ABCDEFGHIJ~+/"
WRONG_KEY = "wrong-key-zyxwvutsrqponmlk"
ORIGIN = "https://app.example.com"
ROW = [19.99, 4.5, 2000.0, 7.0]
INFER = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def demand_probability() -> float:
    return float(forward.Network.load(latest_version("demand")).predict(np.array([ROW]))[0, 0])


# --- the middleware, on a trivial WSGI app ------------------------------------------------------

def hello(environ, start_response):
    return Response(json.dumps({"path": environ["PATH_INFO"]}), mimetype="application/json")(
        environ, start_response)


def guarded(**overrides) -> Client:
    settings = Settings.load(overrides, environ={})
    return Client(middleware(hello, settings))


def test_off_by_default_the_app_is_not_wrapped():
    assert middleware(hello, Settings.load(environ={})) is hello


@pytest.mark.parametrize("path", [
    "/v2", "/v2/models/demand", "/v2/models/demand/infer", "/v2/repository/index", "/v2/models/demand/stats",
    "/v1/models/demand:predict", "/no/such/route", "/v2/health", "/v2/health/live/", "/metrics/"])
def test_with_keys_every_other_path_needs_one(path):
    client = guarded(api_keys=f"{KEY},{OTHER_KEY}")
    missing = client.get(path)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="onnx-serving"'
    assert "Authorization: Bearer" in missing.json["error"]
    wrong = client.get(path, headers=bearer(WRONG_KEY))
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert WRONG_KEY not in wrong.get_data(as_text=True) + str(wrong.headers)
    for key in (KEY, OTHER_KEY):
        assert client.get(path, headers=bearer(key)).json == {"path": path}
        assert client.get(path, headers={"Authorization": f"bearer  {key} "}).status_code == 200


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", KEY, f"Bearer {KEY[:-1]}",
                                    f"Bearer {KEY}x", f"Bearer {KEY} {KEY}", "Bearer \u00e9"])
def test_anything_but_bearer_and_a_key_is_refused(header):
    answer = guarded(api_keys=KEY).get("/v2", headers={"Authorization": header})
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="onnx-serving"')


def test_the_page_health_and_metrics_are_open_unless_configured():
    client = guarded(api_keys=KEY)
    for path in ["/", "/static/page.js", "/openapi.json", "/v2/health/live", "/v2/health/ready", "/metrics"]:
        assert client.get(path).status_code == 200, path
    closed = guarded(api_keys=KEY, public_health="false", public_metrics="false")
    for path in ["/v2/health/live", "/v2/health/ready", "/metrics"]:
        assert closed.get(path).status_code == 401, path
        assert closed.get(path, headers=bearer(KEY)).status_code == 200, path
    assert closed.get("/").status_code == 200


def test_a_preflight_from_an_allowed_origin_needs_no_key():
    client = guarded(api_keys=KEY, cors_origins=f"{ORIGIN}, http://localhost:3000")
    answer = client.options("/v2/models/demand/infer", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,inference-header-content-length"})
    assert answer.status_code == 204 and answer.get_data() == b""
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Origin" in answer.headers.getlist("Vary")
    allowed = {name.strip().lower() for name in answer.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "inference-header-content-length", "x-request-id"} <= allowed
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert int(answer.headers["Access-Control-Max-Age"]) > 0


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    {"Origin": ORIGIN + ":8443", "Access-Control-Request-Method": "POST"},  # another origin
    {"Origin": "null", "Access-Control-Request-Method": "POST"},
    {"Origin": ORIGIN, "Access-Control-Request-Method": "DELETE"},
    {"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-custom"},
], ids=["other-origin", "other-port", "null-origin", "method", "header"])
def test_a_preflight_that_is_not_allowed_is_a_403(headers):
    answer = guarded(cors_origins=ORIGIN).options("/v2/models/demand/infer", headers=headers)
    assert answer.status_code == 403 and answer.json["error"]
    if headers["Origin"] != ORIGIN:
        assert "Access-Control-Allow-Origin" not in answer.headers


def test_requests_from_an_allowed_origin_read_the_answer_and_others_are_refused():
    client = guarded(api_keys=KEY, cors_origins=ORIGIN)
    answer = client.get("/v2", headers={"Origin": ORIGIN, **bearer(KEY)})
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {name.strip() for name in answer.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Inference-Header-Content-Length", "X-Request-ID"} <= exposed
    refused = client.get("/v2", headers={"Origin": ORIGIN})  # a 401 the page may read too
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == ORIGIN
    other = client.post("/v2/models/demand/infer", json=INFER, headers={"Origin": "https://evil.example",
                                                                       **bearer(KEY)})
    assert other.status_code == 403 and "Access-Control-Allow-Origin" not in other.headers
    # the server's own page: same host, no CORS headers needed
    own = client.post("/v2/models/demand/infer", json=INFER, headers={
        "Origin": "http://serving.local:8000", "Host": "serving.local:8000", **bearer(KEY)})
    assert own.status_code == 200 and "Access-Control-Allow-Origin" not in own.headers


@pytest.mark.parametrize(("origin", "scheme", "status"), [
    ("http://serving.local:8000", "http", 200), ("https://serving.local:8000", "https", 200),
    ("https://serving.local:8000", "http", 403), ("http://serving.local:8000", "https", 403),
    ("http://other.local:8000", "http", 403), ("http://serving.local:8001", "http", 403)])
def test_the_own_origin_has_the_requests_scheme_host_and_port(origin, scheme, status):
    """An https page is not the origin of a request that came over http, nor the other way round."""
    client = guarded(api_keys=KEY, cors_origins=ORIGIN)
    answer = client.post("/v2/models/demand/infer", json=INFER, base_url=f"{scheme}://serving.local:8000",
                         headers={"Origin": origin, **bearer(KEY)})
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_any_origin():
    answer = guarded(cors_origins="*").get("/v2", headers={"Origin": "https://anywhere.example"})
    assert answer.status_code == 200 and answer.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize("settings", [{"api_keys": KEY}, {"cors_origins": ORIGIN}], ids=["keys", "cors"])
@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "text/plain;charset=UTF-8",
                                          "TEXT/PLAIN"])
def test_form_bodies_are_refused_when_access_control_is_on(settings, content_type):
    answer = guarded(**settings).post("/v2/models/demand/infer", data=json.dumps(INFER),
                                      headers={"Content-Type": content_type, **bearer(KEY)})
    assert answer.status_code == 415
    assert content_type.split(";")[0].lower() in answer.json["error"]


@pytest.mark.parametrize("line", ["short", "has space in the middle of it", "tab\tinside-a-long-key",
                                  "=padding-first-0123456789"])
def test_a_key_that_cannot_be_sent_stops_the_start_without_showing_it(tmp_path, line):
    keys = tmp_path / "keys"
    keys.write_text(f"# the team's keys\n\n{KEY}\n{line}\n")
    with pytest.raises(ValueError, match="line 4") as error:
        Keys.load(Settings.load({"api_keys_file": keys}, environ={}))
    assert line not in str(error.value) and KEY not in str(error.value)


def test_comments_and_blank_lines_are_skipped_and_the_setting_adds_keys(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"# comment\n\n   {KEY}  \n  # {WRONG_KEY}\n")
    client = Client(AccessControl(hello, Keys.load(Settings.load(
        {"api_keys_file": keys, "api_keys": OTHER_KEY}, environ={})), Settings()))
    for key, status in [(KEY, 200), (OTHER_KEY, 200), (WRONG_KEY, 401), ("# comment", 401)]:
        assert client.get("/v2", headers=bearer(key)).status_code == status, key


def test_keys_are_not_in_the_settings_repr_or_errors():
    settings = Settings.load(environ={"SERVING_API_KEYS": KEY})
    assert settings.api_keys == (KEY,) and KEY not in repr(settings)
    with pytest.raises(ValueError) as error:
        Keys.load(Settings.load(environ={"SERVING_API_KEYS": f"{KEY},tooshort"}))
    assert "SERVING_API_KEYS 2" in str(error.value) and "tooshort" not in str(error.value)


# --- the service, off by default ----------------------------------------------------------------

def test_off_by_default_everything_is_open_and_form_bodies_are_read(server):
    answer = requests.post(f"{server}/v1/models/demand:predict", data=json.dumps({"instances": [ROW]}),
                           headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
    assert answer.status_code == 200
    assert abs(answer.json()["predictions"][0]["probability"][0] - demand_probability()) <= 1e-6
    assert requests.get(f"{server}/v2/models/demand", timeout=10).status_code == 200
    preflight = requests.options(f"{server}/v2/models/demand/infer", timeout=10, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in preflight.headers


# --- the service with keys and origins: nginx, gunicorn and gRPC --------------------------------

@pytest.fixture(scope="module")
def guarded_door(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(f"# keys of the test\n{KEY}\n\n{OTHER_KEY}\n")
    keys.chmod(0o600)
    with front_door(workers=1, SERVING_API_KEYS_FILE=str(keys), SERVING_CORS_ORIGINS=ORIGIN,
                    SERVING_LOG_LEVEL="debug") as running:
        yield running


PROTECTED = [
    ("GET", "/v2", None), ("POST", "/v2/repository/index", {}), ("GET", "/v2/models/demand", None),
    ("GET", "/v2/models/demand/versions/1", None), ("GET", "/v2/models/demand/ready", None),
    ("POST", "/v2/models/demand/infer", INFER), ("GET", "/v1/models/demand", None),
    ("GET", "/v1/models/demand/metadata", None), ("POST", "/v1/models/demand:predict", {"instances": [ROW]}),
    ("POST", "/v1/models/demand:explain", {"instances": [ROW]}),
]


@pytest.mark.parametrize("method, path, body", PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_model_routes_need_a_key(guarded_door, method, path, body):
    url = guarded_door.url + path
    for headers, challenge in [({}, 'Bearer realm="onnx-serving"'),
                               (bearer(WRONG_KEY), 'error="invalid_token"')]:
        answer = requests.request(method, url, json=body, headers=headers, timeout=10)
        assert answer.status_code == 401, answer.text
        assert challenge in answer.headers["WWW-Authenticate"]
        assert answer.json()["error"] and answer.headers["X-Request-ID"]
    answer = requests.request(method, url, json=body, headers=bearer(KEY), timeout=10)
    assert answer.status_code == 200, answer.text


def test_with_the_key_the_answers_are_right(guarded_door):
    url = guarded_door.url
    expected = demand_probability()
    answer = requests.post(f"{url}/v2/models/demand/infer", json=INFER, headers=bearer(OTHER_KEY), timeout=10)
    assert abs(answer.json()["outputs"][0]["data"][0] - expected) <= 1e-6
    answer = requests.post(f"{url}/v1/models/demand:predict", json={"instances": [ROW]},
                           headers=bearer(KEY), timeout=10)
    assert abs(answer.json()["predictions"][0]["probability"][0] - expected) <= 1e-6


def test_health_metrics_and_the_page_stay_open(guarded_door):
    for path in ["/v2/health/live", "/v2/health/ready", "/metrics", "/", "/static/page.js", "/openapi.json"]:
        assert requests.get(guarded_door.url + path, timeout=10).status_code == 200, path


def test_cors_through_the_front_door(guarded_door):
    url = f"{guarded_door.url}/v2/models/demand/infer"
    preflight = requests.options(url, timeout=10, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    denied = requests.options(url, timeout=10, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert denied.status_code == 403 and "Access-Control-Allow-Origin" not in denied.headers
    answer = requests.post(url, json=INFER, headers={"Origin": ORIGIN, **bearer(KEY)}, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN and "Origin" in answer.headers["Vary"]
    # a form posted from a page elsewhere (what curl -d sends, too)
    form = requests.post(f"{guarded_door.url}/v1/models/demand:predict",
                         data=json.dumps({"instances": [ROW]}), timeout=10,
                         headers={"Content-Type": "application/x-www-form-urlencoded", **bearer(KEY)})
    assert form.status_code == 415 and "application/json" in form.json()["error"]


def test_the_own_origin_through_the_front_door(guarded_door):
    """The page's own POSTs pass; an https page's only when the request came over https, which
    behind the front door is X-Forwarded-Proto from nginx's client (a proxy that terminates TLS)."""
    url = f"{guarded_door.url}/v2/models/demand/infer"
    http_origin = guarded_door.url
    https_origin = guarded_door.url.replace("http://", "https://")

    def status(origin: str, **headers: str) -> int:
        return requests.post(url, json=INFER, timeout=10, headers={"Origin": origin, **bearer(KEY),
                                                                   **headers}).status_code

    assert status(http_origin) == 200
    assert status(https_origin) == 403
    assert status(https_origin, **{"X-Forwarded-Proto": "https"}) == 200
    assert status(http_origin, **{"X-Forwarded-Proto": "https"}) == 403


FRONT_DOOR_ERRORS = {  # nginx's own answers, each with the Origin header given
    "body-too-large": (b"POST /v2/models/demand/infer HTTP/1.1\r\nHost: x\r\nOrigin: %s\r\n"
                       b"Content-Length: 99999999\r\n\r\n", 413),
    "bad-chunk": (b"POST /v2/models/demand/infer HTTP/1.1\r\nHost: x\r\nOrigin: %s\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    "headers-too-large": (b"GET /v2 HTTP/1.1\r\nHost: x\r\nOrigin: %s\r\nX-Big: " + b"a" * 20000
                          + b"\r\n\r\n", 400),
    "error-page-itself": (b"GET /.front-door-errors/400 HTTP/1.1\r\nHost: x\r\nOrigin: %s\r\n"
                          b"Connection: close\r\n\r\n", 404),
}


def assert_cors_on_the_front_doors_error(url: str, raw: bytes, status: int) -> None:
    """A page of the listed origin may read nginx's own answer; another origin's may not."""
    for origin, allowed in ((ORIGIN, ORIGIN), ("https://evil.example", None)):
        answer_status, headers, body = exchange(url, raw % origin.encode())
        assert answer_status == status and "error" in json.loads(body), body
        assert headers.get("Access-Control-Allow-Origin") == allowed, origin
        assert "Origin" in headers["Vary"]
        if allowed:
            assert "X-Request-ID" in headers["Access-Control-Expose-Headers"]


@pytest.mark.parametrize("case", FRONT_DOOR_ERRORS)
def test_the_front_doors_own_errors_carry_the_cors_headers(guarded_door, case):
    assert_cors_on_the_front_doors_error(guarded_door.url, *FRONT_DOOR_ERRORS[case])


def test_the_front_doors_502_carries_the_cors_headers():
    """gunicorn unreachable (its socket removed): nginx's 502, readable by a listed origin."""
    with front_door(workers=1, SERVING_CORS_ORIGINS=ORIGIN) as running:
        commands = b" ".join(Path(f"/proc/{pid}/cmdline").read_bytes() for pid in running.descendants())
        (socket,) = set(re.findall(rb"unix:(/\S+?/gunicorn\.sock)", commands))
        Path(os.fsdecode(socket)).unlink()
        assert_cors_on_the_front_doors_error(running.url, b"GET /v2 HTTP/1.1\r\nHost: x\r\nOrigin: %s\r\n"
                                                          b"Connection: close\r\n\r\n", 502)


def test_any_origin_on_the_front_doors_own_errors():
    with front_door(workers=1, SERVING_CORS_ORIGINS="*") as running:
        status, headers, _ = exchange(running.url, FRONT_DOOR_ERRORS["body-too-large"][0] % b"https://a.example")
        assert status == 413 and headers["Access-Control-Allow-Origin"] == "*" and "Vary" not in headers
        status, headers, _ = exchange(running.url, b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000
                                      + b"\r\n\r\n")
        assert status == 400 and "Access-Control-Allow-Origin" not in headers  # no Origin, no CORS


def test_grpc_needs_the_key_but_not_for_health(guarded_door):
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(guarded_door.grpc)
    features = triton.InferInput("features", [1, 4], "FP32")
    features.set_data_from_numpy(np.array([ROW], dtype=np.float32))
    calls = {
        "infer": lambda headers: client.infer("demand", [features], headers=headers),
        "model metadata": lambda headers: client.get_model_metadata("demand", headers=headers),
        "server metadata": lambda headers: client.get_server_metadata(headers=headers),
        "model ready": lambda headers: client.is_model_ready("demand", headers=headers),
    }
    for name, call in calls.items():
        for headers in (None, {"authorization": f"Bearer {WRONG_KEY}"}):
            with pytest.raises(InferenceServerException) as refused:
                call(headers)
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED", name
            assert WRONG_KEY not in str(refused.value)
        assert call({"authorization": f"Bearer {KEY}"}), name
    result = client.infer("demand", [features], headers={"authorization": f"Bearer {KEY}"})
    assert abs(float(result.as_numpy("probability")[0, 0]) - demand_probability()) <= 1e-6
    assert client.is_server_live() and client.is_server_ready()
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(guarded_door.grpc) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_keys_never_reach_a_log(guarded_door):
    """Right and wrong keys, over REST and gRPC, in good and bad requests, at log level debug:
    nothing the server wrote holds either."""
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    url = guarded_door.url
    for key in (KEY, WRONG_KEY):
        requests.post(f"{url}/v2/models/demand/infer", json=INFER, headers=bearer(key), timeout=10)
        requests.post(f"{url}/v2/models/demand/infer", data=b"{not json", headers=bearer(key), timeout=10)
        requests.get(f"{url}/v2/models/no-such-model", headers=bearer(key), timeout=10)
        requests.get(f"{url}/metrics", headers=bearer(key), timeout=10)
        client = triton.InferenceServerClient(guarded_door.grpc)
        with pytest.raises(InferenceServerException):  # NOT_FOUND, or UNAUTHENTICATED
            client.get_model_metadata("no-such-model", headers={"authorization": f"Bearer {key}"})
    time.sleep(0.5)  # the access log lines of the last requests
    log = guarded_door.log_text()
    assert '"path":"/v2/models/demand/infer"' in log.replace(" ", "")  # the requests were logged
    assert KEY not in log and WRONG_KEY not in log and OTHER_KEY not in log


# --- health and metrics behind the key; a keys file that cannot be used -------------------------

def test_health_and_metrics_closed_when_configured():
    with gunicorn(workers=1, SERVING_API_KEYS=KEY, SERVING_PUBLIC_HEALTH="false",
                  SERVING_PUBLIC_METRICS="false") as running:
        for path in ["/v2/health/live", "/v2/health/ready", "/metrics"]:
            assert requests.get(running.url + path, timeout=10).status_code == 401, path
            assert requests.get(running.url + path, headers=bearer(KEY), timeout=10).status_code == 200, path
        assert requests.get(running.url + "/", timeout=10).status_code == 200


def test_grpc_health_closed_when_configured():
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from service.core.dataplane import DataPlane
    from service.grpc.server import build_server
    from service.repository.registry import ModelRegistry
    from service.stubs import messages, services

    settings = Settings.load({"api_keys": KEY, "public_health": False}, environ={})
    server, _ = build_server(DataPlane(ModelRegistry(MODELS).load(), settings), settings)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            live = services.GRPCInferenceServiceStub(channel).ServerLive
            health = health_pb2_grpc.HealthStub(channel).Check
            for call, request in [(live, messages.ServerLiveRequest()),
                                  (health, health_pb2.HealthCheckRequest())]:
                with pytest.raises(grpc.RpcError) as refused:
                    call(request, timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert call(request, timeout=10, metadata=[("authorization", f"Bearer {KEY}")])
    finally:
        server.stop(0)


def test_keys_change_on_sighup_and_a_broken_file_refuses_the_reload(tmp_path):
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    with front_door(workers=1, SERVING_API_KEYS_FILE=str(keys)) as running:
        def status(key: str) -> int:
            return requests.get(f"{running.url}/v2", headers=bearer(key), timeout=10).status_code

        def grpc_accepts(key: str) -> bool:
            try:
                return triton.InferenceServerClient(running.grpc).get_server_metadata(
                    headers={"authorization": f"Bearer {key}"}) is not None
            except InferenceServerException:
                return False

        keys.write_text("")
        running.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload refused" not in running.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reload refused" in running.log_text() and "holds no key" in running.log_text()
        assert status(KEY) == 200 and grpc_accepts(KEY)  # the old processes serve, with the old key

        keys.write_text(OTHER_KEY + "\n")
        running.process.send_signal(signal.SIGHUP)
        def rotated() -> bool:  # old processes may answer for a moment while they stop
            return (status(OTHER_KEY) == 200 and grpc_accepts(OTHER_KEY)
                    and status(KEY) == 401 and not grpc_accepts(KEY))

        deadline = time.monotonic() + 60
        while not rotated() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rotated() and running.process.poll() is None


@pytest.mark.parametrize("content, problem", [
    (None, "cannot be read"), ("# only a comment\n\n", "holds no key")], ids=["missing", "empty"])
def test_a_keys_file_that_cannot_be_used_stops_the_start(tmp_path, content, problem):
    keys = tmp_path / "keys"
    if content is not None:
        keys.write_text(content)
    env = {**os.environ, "SERVING_API_KEYS_FILE": str(keys), "SERVING_BIND": "127.0.0.1:0"}
    started = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
    assert started.returncode == 2
    assert f"SERVING_API_KEYS_FILE='{keys}'" in started.stderr and problem in started.stderr
