"""Bad requests, both protocols: each is answered with the right 4xx and a JSON error that names the
problem, never a 5xx, and none of them disturbs a real gunicorn's later correct answers.

CATALOG is the list of bad requests; the Flask test client and a real gunicorn both receive all of it.
"""

from __future__ import annotations

import http.client
import json
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import pytest

from modelcard import forward
from service import create_app
from tests.conftest import MODELS, PARITY, gunicorn, latest_version

INFER = "/v2/models/demand/infer"
PREDICT = "/v1/models/demand:predict"
JSON = {"Content-Type": "application/json"}
HEADER_LENGTH = "Inference-Header-Content-Length"
# The limits of the second app and gunicorn, for the two 413 cases.
LIMITS = {"max_batch": 8, "max_body_bytes": 10000}

ROW = [25.0, 7.5, 2500.0, 5.5]  # price, shipping_cost, marketing, material; exact in float32
FEATURES = {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": ROW}
ONE_ROW = struct.pack("<4f", *ROW)
INSTANCE = dict(zip(("price", "shipping_cost", "marketing", "material"), ROW, strict=True))


@dataclass(frozen=True)
class Bad:
    method: str
    path: str
    body: bytes
    headers: dict
    status: int
    message: str  # a substring of the expected error message
    limited: bool = False  # sent to the app with LIMITS


def bad(id: str, status: int, message: str, body: bytes = b"", *, method: str = "POST",
        path: str = INFER, headers: dict = JSON, limited: bool = False):
    return pytest.param(Bad(method, path, body, headers, status, message, limited), id=id)


def dumps(document) -> bytes:
    return json.dumps(document).encode()


def tensor(drop: tuple[str, ...] = (), **changes) -> dict:
    """The demand input tensor of one row, with some fields changed and some dropped."""
    return {key: value for key, value in {**FEATURES, **changes}.items() if key not in drop}


def v2(*tensors: dict, **document) -> bytes:
    """A v2 infer body: the given tensors (the good one when none) and further top-level fields."""
    return dumps({"inputs": list(tensors or [FEATURES]), **document})


def binary(size: int, blob: bytes, length: str | None = None) -> dict:
    """Body and headers of the binary extension: a JSON header claiming `size` bytes, then `blob`;
    the header length sent is `length`, or else the true one."""
    header = v2(tensor(drop=("data",), parameters={"binary_data_size": size}))
    headers = {"Content-Type": "application/octet-stream",
               HEADER_LENGTH: str(len(header)) if length is None else length}
    return {"body": header + blob, "headers": headers}


def tf(**document) -> bytes:
    return dumps(document)


CATALOG = [
    # The body as a whole.
    bad("json-malformed", 400, "not valid JSON", b'{"inputs": ['),
    bad("json-nan-literal", 400, "not valid JSON", v2().replace(b"25.0", b"NaN")),  # NaN is not JSON
    bad("body-empty", 400, "empty", b""),
    bad("json-not-object", 400, "must be a JSON object", b"[1, 2, 3, 4]"),
    bad("inputs-missing", 400, "'inputs'", dumps({"id": "a"})),
    bad("inputs-not-list", 400, "'inputs'", dumps({"inputs": FEATURES})),
    bad("inputs-empty", 400, "'inputs'", dumps({"inputs": []})),
    bad("id-not-string", 400, "'id'", v2(id=7)),
    bad("outputs-unknown", 400, "unknown output 'logits'", v2(outputs=[{"name": "logits"}])),
    # One input tensor.
    bad("input-not-object", 400, "inputs[0] must be an object", dumps({"inputs": [ROW]})),
    bad("name-missing", 400, "inputs[0].name", v2(tensor(drop=("name",)))),
    bad("name-unknown", 400, "unknown input", v2(tensor(name="pixels"))),
    bad("input-twice", 400, "given twice", v2(FEATURES, FEATURES)),
    bad("shape-missing", 400, "'shape'", v2(tensor(drop=("shape",)))),
    bad("datatype-missing", 400, "'datatype'", v2(tensor(drop=("datatype",)))),
    bad("data-missing", 400, "'data'", v2(tensor(drop=("data",)))),
    bad("shape-width-3", 400, "does not match", v2(tensor(shape=[1, 3], data=ROW[:3]))),
    bad("shape-rank-3", 400, "does not match", v2(tensor(shape=[1, 1, 4]))),
    bad("shape-rank-1", 400, "does not match", v2(tensor(shape=[4]))),
    bad("shape-negative", 400, "non-negative", v2(tensor(shape=[-1, 4]))),
    bad("shape-count-overflow", 400, "shape", v2(tensor(shape=[2**32, 2**32], data=[]))),
    bad("shape-rank-66", 400, "shape", v2(tensor(shape=[1] * 65 + [4]))),
    bad("batch-empty", 400, "empty", v2(tensor(shape=[0, 4], data=[]))),
    bad("data-count", 400, "data has 4 values", v2(tensor(shape=[2, 4]))),
    bad("datatype-unknown", 400, "unknown datatype", v2(tensor(datatype="FLOAT32"))),
    bad("datatype-bytes", 400, "BYTES is not supported", v2(tensor(datatype="BYTES"))),
    bad("datatype-bool", 400, "BOOL needs true or false", v2(tensor(datatype="BOOL"))),
    bad("bool-for-fp32", 400, "takes FP32", v2(tensor(datatype="BOOL", data=[True] * 4))),
    bad("data-strings", 400, "strings", v2(tensor(data=["25", 7.5, 2500, 5.5]))),
    bad("data-null", 400, "null", v2(tensor(data=[25, None, 2500, 5.5]))),
    bad("data-boolean", 400, "booleans", v2(tensor(data=[True, 7.5, 2500, 5.5]))),
    bad("data-ragged", 400, "ragged", v2(tensor(shape=[2, 4], data=[ROW, ROW[:3]]))),
    bad("int-fraction", 400, "whole numbers", v2(tensor(datatype="INT32", data=[25.5, 7, 2500, 5]))),
    bad("int8-range", 400, "range of INT8", v2(tensor(datatype="INT8", data=[25, 7, 2500, 5]))),
    bad("beyond-fp32", 400, "FP32 range", v2(tensor(data=[1e39, 7.5, 2500, 5.5]))),
    # The binary tensor data extension.
    bad("bin-length-text", 400, HEADER_LENGTH, **binary(16, ONE_ROW, "abc")),
    bad("bin-length-superscript", 400, HEADER_LENGTH, **binary(16, ONE_ROW, "\u00b2")),
    bad("bin-length-past-body", 400, HEADER_LENGTH, **binary(16, ONE_ROW, "100000")),
    bad("bin-size-vs-shape", 400, "needs 16", **binary(12, ONE_ROW[:12])),
    bad("bin-size-past-body", 400, "past the end", **binary(32, ONE_ROW)),
    bad("bin-unclaimed", 400, "no input claims", **binary(16, ONE_ROW + b"\0\0\0\0")),
    # Models, versions, routes, methods, content types.
    bad("model-unknown", 404, "'nope' not found", v2(), path="/v2/models/nope/infer"),
    bad("model-dotdot", 404, "not found", v2(), path="/v2/models/%2e%2e/infer"),
    bad("traversal", 404, "no such route", v2(), path="/v2/models/..%2f..%2fetc/infer"),
    bad("version-unknown", 404, "version 7", v2(), path="/v2/models/demand/versions/7/infer"),
    bad("version-0", 404, "'0'", v2(), path="/v2/models/demand/versions/0/infer"),
    bad("version-minus-1", 404, "'-1'", v2(), path="/v2/models/demand/versions/-1/infer"),
    bad("version-abc", 404, "'abc'", v2(), path="/v2/models/demand/versions/abc/infer"),
    bad("version-dotdot", 404, "'..'", v2(), path="/v2/models/demand/versions/../infer"),
    bad("metadata-unknown", 404, "'nope' not found", method="GET", path="/v2/models/nope"),
    bad("ready-version-0", 404, "'0'", method="GET", path="/v2/models/demand/versions/0/ready"),
    bad("get-infer", 405, "method not allowed", method="GET"),
    bad("delete-metadata", 405, "method not allowed", method="DELETE", path="/v2/models/demand"),
    bad("text-plain", 415, "text/plain", v2(), headers={"Content-Type": "text/plain"}),
    bad("xml", 415, "application/xml", v2(), headers={"Content-Type": "application/xml"}),
    bad("other-model-input", 400, "unknown input", v2(), path="/v2/models/digits-binary/infer"),
    # TensorFlow Serving.
    bad("tf-neither", 400, "exactly one", tf(signature_name="serving_default"), path=PREDICT),
    bad("tf-both", 400, "exactly one", tf(instances=[ROW], inputs=[ROW]), path=PREDICT),
    bad("tf-instances-object", 400, "'instances'", tf(instances=INSTANCE), path=PREDICT),
    bad("tf-instances-empty", 400, "'instances'", tf(instances=[]), path=PREDICT),
    bad("tf-feature-missing", 400, "missing 'material'",
        tf(instances=[{k: v for k, v in INSTANCE.items() if k != "material"}]), path=PREDICT),
    bad("tf-key-unknown", 400, "unknown 'color'", tf(instances=[{**INSTANCE, "color": 3}]), path=PREDICT),
    bad("tf-field-unknown", 400, "'instance'", tf(instance=[ROW]), path=PREDICT),
    bad("tf-signature", 400, "signature_name", tf(instances=[ROW], signature_name="train"), path=PREDICT),
    bad("tf-columns-unequal", 400, "same length",
        tf(inputs={**{k: [v] for k, v in INSTANCE.items()}, "price": [1, 2]}), path=PREDICT),
    bad("tf-verb-unknown", 400, ":predict", tf(instances=[ROW]), path="/v1/models/demand:foo"),
    bad("tf-no-verb", 400, ":predict", tf(instances=[ROW]), path="/v1/models/demand"),
    bad("tf-explain-width", 400, "does not match", tf(instances=[ROW[:3]]),
        path="/v1/models/demand:explain"),
    bad("tf-digits-width", 400, "does not match", tf(instances=[[0] * 63]),
        path="/v1/models/digits:predict"),
    bad("tf-model-unknown", 404, "'nope' not found", tf(instances=[ROW]), path="/v1/models/nope:predict"),
    bad("tf-version-abc", 404, "'abc'", tf(instances=[ROW]), path="/v1/models/demand/versions/abc:predict"),
    bad("tf-status-version", 404, "version 9", method="GET", path="/v1/models/demand/versions/9"),
    bad("tf-get-predict", 405, "method not allowed", method="GET", path=PREDICT),
    bad("tf-xml", 415, "application/xml", tf(instances=[ROW]), path=PREDICT,
        headers={"Content-Type": "application/xml"}),
    # Over the limits of the second app.
    bad("batch-over-limit", 413, "limit of 8", v2(tensor(shape=[9, 4], data=[ROW] * 9)), limited=True),
    bad("tf-batch-over-limit", 413, "limit of 8", tf(instances=[ROW] * 9), path=PREDICT, limited=True),
    bad("body-over-limit", 413, "larger than the configured limit",
        v2(tensor(shape=[600, 4], data=[ROW] * 600)), limited=True),
]


def check(entry: Bad, status: int, body: bytes, headers) -> None:
    assert status < 500, body
    assert status == entry.status, body
    document = json.loads(body)
    assert list(document) == ["error"]
    assert isinstance(document["error"], str) and document["error"]
    assert entry.message in document["error"]
    assert headers.get("X-Request-ID")


@pytest.fixture(scope="module")
def limited_app():
    return create_app({"model_repository": MODELS, **LIMITS})


@pytest.mark.parametrize("entry", CATALOG)
def test_bad_request_gets_a_clear_json_error(entry, client, limited_app):
    test_client = limited_app.test_client() if entry.limited else client
    response = test_client.open(entry.path, method=entry.method, data=entry.body, headers=entry.headers)
    check(entry, response.status_code, response.get_data(), response.headers)


@pytest.fixture(scope="module")
def limited_server():
    environment = {f"SERVING_{name.upper()}": str(value) for name, value in LIMITS.items()}
    with gunicorn(workers=1, **environment) as running:
        yield running.url


def send(base: str, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """One request on its own connection, the path sent exactly as written: (status, body, headers)."""
    address = urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), response.headers
    finally:
        connection.close()


ROWS = [ROW, [10.0, 2.0, 4000.0, 9.0], [45.0, 14.0, 100.0, 1.5]]


def test_bad_requests_leave_gunicorn_answering_correctly(server, limited_server):
    expected = forward.Network.load(latest_version("demand")).predict(np.array(ROWS)).ravel()
    good = v2(tensor(shape=[3, 4], data=ROWS))
    problems = []
    for param in CATALOG:
        (entry,) = param.values
        base = limited_server if entry.limited else server
        try:
            check(entry, *send(base, entry.method, entry.path, entry.body, entry.headers))
        except AssertionError as error:
            problems.append(f"{param.id}: {error}")
        status, body, _ = send(base, "POST", INFER, good, JSON)
        assert status == 200, f"the good request after {param.id} got {status} {body!r}"
        (output,) = json.loads(body)["outputs"]
        assert output["name"] == "probability" and output["shape"] == [3, 1]
        assert np.max(np.abs(np.array(output["data"]) - expected)) <= PARITY, f"after {param.id}"
    assert send(server, "GET", "/v2/health/live")[0] == 200
    assert not problems, "\n".join(problems)
