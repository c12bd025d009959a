"""Fuzzing: schemathesis against /openapi.json on a real gunicorn, and Hypothesis properties for
tensor decoding: every request is either answered correctly (by the NumPy forward propagation)
or refused with a 4xx and a JSON error."""

from __future__ import annotations

import json
import os

import numpy as np
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelcard import forward
from tests.conftest import latest_version

CASES_PER_OPERATION = 100  # operations with few inputs run out early: about 1,400 cases in all


def test_no_generated_request_gets_a_5xx(server):
    """Every operation of /openapi.json, with generated paths, parameters and bodies."""
    api = schemathesis.openapi.from_url(f"{server}/openapi.json")
    sent = {"cases": 0}
    for result in api.get_all_operations():
        operation = result.ok()

        # Fresh cases on every local run; a fixed sequence in CI, so that its verdict repeats.
        @settings(max_examples=CASES_PER_OPERATION, deadline=None, database=None,
                  derandomize=bool(os.environ.get("CI")), suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def fuzz(case):
            sent["cases"] += 1
            response = case.call()
            where = (case.method, case.formatted_path, response.text[:300])
            assert response.status_code < 500, where
            if response.status_code >= 400:  # every error is {"error": "<message>"}
                document = json.loads(response.content)
                assert isinstance(document, dict) and str(document.get("error", "")).strip(), where

        fuzz()
    print(f"\nschemathesis cases sent: {sent['cases']}")
    assert sent["cases"] >= 1000


# --- tensor decoding properties ---------------------------------------------------------------

NETWORK = forward.Network.load(latest_version("demand"))
DATATYPES = ["FP32"] * 6 + ["FP64", "FP16", "INT8", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "fp32", "X"]
ordinary = st.one_of(st.floats(-1e4, 1e4), st.integers(-100, 100))
extreme = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),  # beyond FP32 at times
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, 1, 7.5, 19.99, 2000, 1e39, -1e39]),
)
numbers = st.one_of(*[ordinary] * 7, extreme)
anything = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=3))
answered = {"valid": 0, "all": 0}


def nest(flat: list, shape: list[int]):
    if len(shape) <= 1:
        return flat
    size = len(flat) // shape[0] if shape[0] else 0
    return [nest(flat[i * size:(i + 1) * size], shape[1:]) for i in range(shape[0])]


@st.composite
def v2_tensors(draw):
    shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))
    if draw(st.integers(0, 3)):  # mostly the right width, so that many answers are 200
        shape = [draw(st.integers(1, 4)), 4]
    count = int(np.prod(shape))
    count += draw(st.sampled_from([0] * 6 + [1, -1])) if count else 0
    elements = numbers if draw(st.integers(0, 3)) else anything
    flat = draw(st.lists(elements, min_size=max(count, 0), max_size=max(count, 0)))
    data = nest(flat, shape) if draw(st.booleans()) else flat
    return {"name": "features", "shape": shape, "datatype": draw(st.sampled_from(DATATYPES)),
            "data": data}


def expected_or_none(tensor: dict) -> np.ndarray | None:
    """The right answer when the request is valid, by the documented conversion rule; else None."""
    shape, datatype = tensor["shape"], tensor["datatype"]
    if datatype not in ("FP32", "FP64", "FP16", "INT8", "INT32", "INT64", "UINT8"):
        return None
    flat = np.array(tensor["data"], dtype=object).ravel().tolist() if tensor["data"] else []
    if len(shape) != 2 or shape[1] != 4 or shape[0] == 0 or len(flat) != shape[0] * 4:
        return None
    if not all(type(v) in (int, float) for v in flat):
        return None
    if datatype.startswith(("INT", "UINT")):
        limits = np.iinfo(datatype.lower())
        if not all(type(v) is int and limits.min <= v <= limits.max for v in flat):
            return None
    declared = {"FP16": np.float16, "FP64": np.float64}.get(datatype, np.float32)
    with np.errstate(over="ignore"):  # rounded to the declared datatype, then to the model's FP32
        x = np.array(flat, dtype=np.float64).astype(declared).astype(np.float32)
    if not np.isfinite(x).all():
        return None
    return NETWORK.predict(x.reshape(shape))


# derandomize: the same examples on every run, so the share of valid tensors is stable.
@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensor=v2_tensors())
def test_v2_json_decoding_is_right_or_refused(client, tensor):
    try:
        body = json.dumps({"inputs": [tensor]}, allow_nan=False)
    except ValueError:
        return  # NaN or infinity cannot be written as JSON
    response = client.post("/v2/models/demand/infer", data=body, content_type="application/json")
    expected = expected_or_none(tensor)
    answered["all"] += 1
    answered["valid"] += expected is not None
    if expected is None:
        assert 400 <= response.status_code < 500, (tensor, response.get_json())
        assert response.get_json()["error"]
    else:
        assert response.status_code == 200, (tensor, response.get_json())
        served = np.array(response.get_json()["outputs"][0]["data"]).reshape(expected.shape)
        # Generated inputs lie far outside the features' ranges (a material score of 5,613):
        # onnxruntime's float32 then drifts from the float64 oracle by a few 1e-6 at most.
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)


def test_the_properties_saw_valid_requests_too():
    """Not only refusals: a fair share of the generated tensors must have been answered."""
    print(f"\ntensors generated: {answered['all']}, valid and answered: {answered['valid']}")
    assert answered["valid"] >= answered["all"] // 20


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(0, 6), width=st.sampled_from([3, 4, 5]),
       datatype=st.sampled_from(["FP32", "FP64", "INT32", "UINT8", "BOOL"]),
       skew=st.sampled_from([0, 0, 0, 1, -1, 4]), seed=st.integers(0, 2**32 - 1))
def test_v2_binary_decoding_is_right_or_refused(client, rows, width, datatype, skew, seed):
    rng = np.random.default_rng(seed)
    dtype = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "UINT8": "u1", "BOOL": "?"}[datatype]
    x = rng.uniform(0, 200, (rows, width)).astype(dtype)
    blob = x.tobytes()
    size = max(len(blob) + skew, 0)
    blob = (blob + b"\0" * max(skew, 0))[:size]
    header = json.dumps({"inputs": [{"name": "features", "shape": [rows, width], "datatype": datatype,
                                     "parameters": {"binary_data_size": size}}]}).encode()
    response = client.post("/v2/models/demand/infer", data=header + blob,
                           headers={"Inference-Header-Content-Length": str(len(header))},
                           content_type="application/octet-stream")
    valid = rows > 0 and width == 4 and skew == 0 and datatype != "BOOL"
    if not valid:
        assert 400 <= response.status_code < 500 and response.get_json()["error"]
        return
    assert response.status_code == 200, response.get_json()
    expected = NETWORK.predict(x.astype(np.float32))
    served = np.array(response.get_json()["outputs"][0]["data"]).reshape(expected.shape)
    assert np.max(np.abs(served - expected)) <= 1e-6
