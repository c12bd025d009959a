"""Security: no code from data (no pickle, eval or exec), names that cannot reach the filesystem,
and limits on bodies and batches."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil

import numpy as np
import pytest

from service import create_app
from tests.conftest import MODELS, ROOT

SOURCES = sorted([*ROOT.glob("modelcard/*.py"), *ROOT.glob("service/**/*.py"), *ROOT.glob("training/**/*.py"),
                  *ROOT.glob("bench/*.py")])


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_code_is_loaded_from_data(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve")
                           for n in names), f"{path}:{node.lineno} imports a deserialiser of code"
    for call in calls(tree):
        if isinstance(call.func, ast.Name):  # the builtins, not re.compile or model.compile
            assert call.func.id not in ("eval", "exec", "compile", "__import__"), \
                f"{path}:{call.lineno} {call.func.id}()"
        elif getattr(call.func, "attr", "") == "load" and getattr(call.func.value, "id", "") == "np":
            flag = {k.arg: k.value for k in call.keywords}.get("allow_pickle")
            assert isinstance(flag, ast.Constant) and flag.value is False, \
                f"{path}:{call.lineno} np.load without allow_pickle=False"


def test_weights_holding_pickled_objects_are_refused(tmp_path):
    repository = tmp_path / "models"
    shutil.copytree(MODELS, repository)
    version = repository / "demand" / "1"
    with np.load(version / "weights.npz") as weights:
        arrays = dict(weights)
    arrays["W1"] = np.array([object()] * 12, dtype=object).reshape(4, 3)  # needs pickle to load
    np.savez(version / "weights.npz", **arrays)
    card = json.loads((version / "card.json").read_text())
    digest = hashlib.sha256((version / "weights.npz").read_bytes()).hexdigest()
    card["files"]["weights.npz"]["sha256"] = digest
    (version / "card.json").write_text(json.dumps(card))

    client = create_app({"model_repository": repository}).test_client()
    response = client.get("/v2/models/demand/ready")
    assert response.status_code == 503
    assert "pickle" in response.get_json()["error"].lower()
    assert client.get("/v2/models/digits/ready").status_code == 200


@pytest.mark.parametrize("path", [
    "/v2/models/..%2F..%2Fetc%2Fpasswd/infer",
    "/v2/models/%2E%2E/versions/1/infer",
    "/v2/models/demand/versions/..%2F..%2Fdigits%2F1/infer",
    "/v2/models/demand/versions/1%2F..%2F1/infer",
    "/v1/models/..%2Fdemand:predict",
    "/v1/models/demand/versions/%2E%2E:predict",
])
def test_names_and_versions_cannot_reach_the_filesystem(client, path):
    body = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "instances": [[1, 2, 3, 4]]}
    response = client.post(path, json=body)
    assert response.status_code == 404, (path, response.get_json())


def test_model_lookup_never_touches_the_disk(app, monkeypatch):
    """Requests are answered from memory: a name is a dictionary key, never a path."""
    import pathlib

    def forbidden(*args, **kwargs):
        raise AssertionError("the filesystem was read while answering a request")

    monkeypatch.setattr(pathlib.Path, "open", forbidden)
    monkeypatch.setattr(pathlib.Path, "read_bytes", forbidden)
    monkeypatch.setattr(pathlib.Path, "read_text", forbidden)
    client = app.test_client()
    answer = client.post("/v2/models/demand/infer", json={"inputs": [
        {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [20, 5, 2000, 7]}]})
    assert answer.status_code == 200
    assert client.get("/v2/models/..%2Fdemand").status_code == 404


def test_body_and_batch_limits():
    client = create_app({"model_repository": MODELS, "max_body_bytes": 2048, "max_batch": 2}).test_client()
    rows = [[1, 2, 3, 4]] * 3
    too_many = client.post("/v1/models/demand:predict", json={"instances": rows})
    assert too_many.status_code == 413 and "3 rows" in too_many.get_json()["error"]
    too_big = client.post("/v1/models/demand:predict", data=b'{"instances": [' + b" " * 4096 + b"]}",
                          content_type="application/json")
    assert too_big.status_code == 413
    ok = client.post("/v1/models/demand:predict", json={"instances": rows[:2]})
    assert ok.status_code == 200
