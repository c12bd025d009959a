"""Large bodies through the front door: nginx hands gunicorn a file instead of the bytes
(service/process/nginx.py), and a client can never name that file itself."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_digits

from modelcard import forward
from service.process.nginx import LARGE_BODY_DIGITS
from tests.conftest import front_door, gunicorn, latest_version

LARGE = 10 ** (LARGE_BODY_DIGITS - 1)  # the smallest body nginx hands over as a file
# Real digits (scikit-learn's bundled set), 4,000 rows: a million bytes or more in every encoding.
ROWS = np.resize(load_digits().data, (4000, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def digits():
    return forward.Network.load(latest_version("digits"))


@pytest.fixture(scope="module")
def door():
    with front_door(workers=2) as running:
        yield running


def post(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def v2_json(rows: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "pixels", "shape": list(rows.shape), "datatype": "FP32",
                                   "data": rows.ravel().tolist()}]}).encode()


def body_folder(door) -> Path:
    """nginx's folder of request bodies, from the -p option of its master's title."""
    for pid in door.descendants():
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        found = re.search(r"master process .* -p (\S+)", title)
        if found:
            return Path(found[1]) / "client-body"
    raise AssertionError("no nginx below the front door")


def test_a_large_json_body_is_answered_like_the_oracle(door, digits):
    body = v2_json(ROWS)
    assert len(body) >= LARGE
    status, answer = post(door.url, "/v2/models/digits/infer", body)
    assert status == 200, answer
    served = np.array(answer["outputs"][0]["data"]).reshape(len(ROWS), -1)
    np.testing.assert_allclose(served, digits.predict(ROWS.astype(np.float64)), atol=1e-6)
    assert list(body_folder(door).iterdir()) == []  # nginx deleted the file once answered


def test_a_large_binary_body_from_tritonclient(door, digits):
    client = triton.InferenceServerClient(door.url.removeprefix("http://"))
    pixels = triton.InferInput("pixels", list(ROWS.shape), "FP32")
    pixels.set_data_from_numpy(ROWS, binary_data=True)
    assert ROWS.nbytes >= LARGE
    result = client.infer("digits", [pixels], outputs=[triton.InferRequestedOutput("probabilities")])
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               digits.predict(ROWS.astype(np.float64)), atol=1e-6)


def test_a_large_tf_serving_body(door, digits):
    body = json.dumps({"instances": ROWS.tolist()}).encode()
    assert len(body) >= LARGE
    status, answer = post(door.url, "/v1/models/digits:predict", body)
    assert status == 200, answer
    np.testing.assert_allclose(np.array([row["probabilities"] for row in answer["predictions"]]),
                               digits.predict(ROWS.astype(np.float64)), atol=1e-6)


def test_a_large_bad_body_is_a_400_and_the_next_one_is_answered(door, digits):
    status, answer = post(door.url, "/v2/models/digits/infer", v2_json(ROWS[:, :63]))
    assert status == 400 and "shape" in answer["error"]
    test_a_large_json_body_is_answered_like_the_oracle(door, digits)


@pytest.mark.parametrize("server", ["front door", "gunicorn alone"])
def test_a_client_cannot_name_the_body_file(tmp_path, digits, server):
    """The header that hands a body over, sent by a client, names a file holding another
    request; the answer must be computed from the body sent, not from that file."""
    decoy = tmp_path / "decoy"
    decoy.write_bytes(v2_json(ROWS[:3] * 0))
    sent = ROWS[:2]
    start = front_door if server == "front door" else gunicorn
    with start(workers=1, SERVING_BODY_FILES=str(tmp_path)) as running:
        status, answer = post(running.url, "/v2/models/digits/infer", v2_json(sent),
                              {"X-Front-Door-Body-File": str(decoy)})
    assert status == 200, answer
    served = np.array(answer["outputs"][0]["data"]).reshape(len(sent), -1)
    np.testing.assert_allclose(served, digits.predict(sent.astype(np.float64)), atol=1e-6)
