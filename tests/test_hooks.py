"""The data plane's hooks (service/core/hooks.py): one hook added to the data plane hears every
inference of every transport, before and after the run, every call's end, and every version
loaded, unloaded or refused; the metrics and classification hooks are the data plane's own."""

from __future__ import annotations

import json
import shutil

import grpc
import numpy as np
import pytest

from modelcard.forward import Network
from service import create_app
from service.core.classification import Classification
from service.core.dataplane import DataPlane
from service.core.errors import BadRequest
from service.core.hooks import Hook
from service.core.metrics import Metrics
from service.grpc.server import build_server
from service.repository.registry import ModelRegistry
from service.settings import Settings
from service.stubs import messages, services
from tests.conftest import MODELS
from tests.test_polling import write_version

ROWS = np.random.default_rng(7).uniform(0, 1, (3, 64))


class Recorder(Hook):
    def __init__(self):
        self.heard = []

    def before_run(self, inference):
        self.heard.append(("before", inference.call.protocol, inference.model.name, inference.rows))

    def after_run(self, inference):
        outputs = {name: values.copy() for name, values in inference.response.outputs.items()}
        self.heard.append(("after", inference.call.protocol, inference.rows, outputs))

    def finished(self, call, status, succeeded):
        self.heard.append(("finished", call.protocol, call.model, call.version, status, succeeded))

    def loaded(self, name, version):
        self.heard.append(("loaded", name, version))

    def unloaded(self, name, version):
        self.heard.append(("unloaded", name, version))

    def refused(self, name, version, kept):
        self.heard.append(("refused", name, version, kept))


def digits_oracle(rows: np.ndarray) -> np.ndarray:
    """The NumPy forward propagation of the committed digits network."""
    folder = MODELS / "digits" / "1"
    return Network.from_weights(json.loads((folder / "card.json").read_text()),
                                folder / "weights.npz").predict(rows)


def test_the_default_hooks_are_classification_then_metrics():
    plane = DataPlane(ModelRegistry(MODELS).load(), Settings())
    assert [type(hook) for hook in plane.hooks] == [Classification, Metrics]


def test_a_hook_hears_rest_inferences_and_their_ends():
    app = create_app({"model_repository": str(MODELS), "poll_interval": 0})
    recorder = Recorder()
    app.extensions["data_plane"].add_hook(recorder)
    client = app.test_client()
    expected = digits_oracle(ROWS)
    answer = client.post("/v2/models/digits/infer", json={"inputs": [
        {"name": "pixels", "datatype": "FP32", "shape": list(ROWS.shape), "data": ROWS.ravel().tolist()}]})
    assert answer.status_code == 200
    assert client.post("/v1/models/digits:predict", json={"instances": ROWS.tolist()}).status_code == 200
    assert client.post("/v1/models/digits:explain", json={"instances": ROWS.tolist()}).status_code == 200
    assert client.get("/v2/models/digits").status_code == 200
    assert client.post("/v2/models/nothing/infer", json={}).status_code == 404
    assert client.get("/v2/health/ready").status_code == 200  # no model: not a counted call
    before = [entry for entry in recorder.heard if entry[0] == "before"]
    after = [entry for entry in recorder.heard if entry[0] == "after"]
    finished = [entry[1:] for entry in recorder.heard if entry[0] == "finished"]
    assert before == [("before", protocol, "digits", 3) for protocol in ("v2", "tfserving", "explain")]
    for _, _, rows, outputs in after:
        [values] = outputs.values()
        assert rows == 3 and np.allclose(values, expected, atol=1e-6)
    assert finished == [("v2", "digits", "1", "200", True), ("tfserving", "digits", "1", "200", True),
                        ("explain", "digits", "1", "200", True), ("v2", "digits", "1", "200", True),
                        ("v2", "", "", "404", False)]


def test_a_hook_hears_grpc_calls_and_may_refuse_a_run():
    plane = DataPlane(ModelRegistry(MODELS).load(), Settings())
    recorder = Recorder()
    plane.add_hook(recorder)

    class Refuse(Hook):
        def before_run(self, inference):
            if inference.model.name == "demand":
                raise BadRequest("demand is closed today")

    plane.add_hook(Refuse())
    server, _ = build_server(plane, plane.settings)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = services.GRPCInferenceServiceStub(channel)
            Tensor = messages.ModelInferRequest.InferInputTensor
            request = messages.ModelInferRequest(model_name="digits", inputs=[
                Tensor(name="pixels", datatype="FP32", shape=list(ROWS.shape))])
            request.raw_input_contents.append(ROWS.astype(np.float32).tobytes())
            answer = stub.ModelInfer(request, timeout=10)
            values = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(3, -1)
            assert np.allclose(values, digits_oracle(ROWS), atol=1e-6)
            request = messages.ModelInferRequest(model_name="demand", inputs=[
                Tensor(name="features", datatype="FP32", shape=[1, 4])])
            request.raw_input_contents.append(np.array([[200, 17, 1, 0]], np.float32).tobytes())
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "demand is closed today" in refused.value.details()
    finally:
        server.stop(0)
    finished = [entry[1:] for entry in recorder.heard if entry[0] == "finished"]
    assert finished == [("grpc", "digits", "1", "OK", True),
                        ("grpc", "demand", "1", "INVALID_ARGUMENT", False)]
    assert [entry[0] for entry in recorder.heard if entry[0] != "finished"] == ["before", "after", "before"]


def test_a_hook_hears_versions_loaded_unloaded_and_refused(tmp_path):
    write_version(tmp_path, "demand", 1)
    recorder = Recorder()
    plane = DataPlane(ModelRegistry(tmp_path), Settings(), hooks=[recorder])
    plane.refresh()
    assert recorder.heard == [("loaded", "demand", 1)]
    write_version(tmp_path, "demand", 2)
    write_version(tmp_path, "demand", 3, damage=lambda folder: (folder / "model.onnx").write_bytes(b"broken"))
    recorder.heard.clear()
    plane.refresh()
    assert sorted(recorder.heard) == [("loaded", "demand", 2), ("refused", "demand", 3, False)]
    shutil.rmtree(tmp_path / "demand" / "2")
    recorder.heard.clear()
    plane.refresh()
    assert recorder.heard == [("unloaded", "demand", 2)]


def test_a_failing_hook_leaves_the_refresh_and_the_other_hooks_whole(tmp_path, caplog):
    class Broken(Hook):
        def loaded(self, name, version):
            raise RuntimeError("hook bug")

    write_version(tmp_path, "demand", 1)
    recorder = Recorder()
    plane = DataPlane(ModelRegistry(tmp_path), Settings(), hooks=[Broken(), recorder])
    plane.refresh()
    assert recorder.heard == [("loaded", "demand", 1)] and plane.readiness().ready
    assert "hook Broken failed on model demand version 1 loaded" in caplog.text
