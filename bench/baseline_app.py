"""The baseline: the ten-line service people write. Standard-library JSON, onnxruntime, nothing else.

Run as `gunicorn -w 2 bench.baseline_app:app`. Its v2-shaped answers let the same load drive both.
"""

import json
import pathlib

import numpy as np
import onnxruntime
from flask import Flask, request

MODELS = pathlib.Path(__file__).resolve().parent.parent / "models"
app = Flask(__name__)
sessions = {
    path.parent.parent.name: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for path in sorted(MODELS.glob("*/1/model.onnx"))
}


@app.post("/v2/models/<name>/infer")
def infer(name):
    body = json.loads(request.get_data())
    tensor = body["inputs"][0]
    x = np.array(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    session = sessions[name]
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    return {"outputs": [{"name": session.get_outputs()[0].name, "shape": list(y.shape),
                         "datatype": "FP32", "data": y.ravel().tolist()}]}
