"""One copy of the weights per machine, proved by structure, not timing: `python -m service` with 2
gunicorn workers and 2 gRPC processes serving a convolutional network of about 37 MB (random
weights, built with onnx.helper). Every serving process maps the same weights file of the model
cache (/proc/PID/maps) and holds none of its pages privately (/proc/PID/smaps: no Private_Dirty in
that mapping); answers over REST and gRPC equal onnxruntime on the source model.onnx. A new
version polled in is mapped by all; a version whose folder is removed is unloaded by the poll,
and then no process maps its file.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench import harness
from service.repository.optimised_cache import WEIGHTS
from tests.conftest import front_door
from tests.onnx_models import conv_network, run, write_version
from tests.test_reliability import copy_repository, wait_for

IMAGE = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
TOLERANCE = 1e-4  # optimised kernels sum in another order than the source graph's


def serving_processes(server) -> list[int]:
    """gunicorn's workers and the gRPC processes below the launcher."""
    below = harness.Server(server.url, [server.process], Path("/dev/null"))
    return sorted(below.gunicorn_workers() + server.grpc_processes())


def mapping(pid: int, path: Path) -> dict[str, int]:
    """kB of each kind (Rss, Private_Dirty, ...) summed over the process's mappings of `path`."""
    totals, inside = {}, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(" " + str(path))
            totals["mappings"] = totals.get("mappings", 0) + inside
        elif inside and (found := re.match(r"^(\w+):\s+(\d+) kB", line)):
            totals[found[1]] = totals.get(found[1], 0) + int(found[2])
    return totals


def weights_files(cache: Path) -> dict[str, Path]:
    """source sha256 -> that entry's weights file."""
    found = {}
    for manifest in cache.glob(f"*/{'manifest.json'}"):
        found[json.loads(manifest.read_text())["key"]["source_sha256"]] = manifest.parent / WEIGHTS
    return found


def rest_features(url: str, version: int) -> np.ndarray:
    body = json.dumps({"inputs": [{"name": "image", "shape": list(IMAGE.shape), "datatype": "FP32",
                                   "data": IMAGE.ravel().tolist()}]}).encode()
    request = urllib.request.Request(f"{url}/v2/models/conv/versions/{version}/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        output = json.loads(answer.read())["outputs"][0]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def grpc_features(address: str, version: int) -> np.ndarray:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(address, channel_args=[("grpc.use_local_subchannel_pool", 1)])
    try:
        image = triton.InferInput("image", list(IMAGE.shape), "FP32")
        image.set_data_from_numpy(IMAGE)
        return client.infer("conv", [image], model_version=str(version)).as_numpy("features")
    finally:
        client.close()


def test_every_serving_process_maps_one_copy_of_the_weights_until_the_version_is_unloaded(tmp_path):
    repository = copy_repository(tmp_path)
    first = write_version(repository, "conv", 1, conv_network(channels=512, layers=5, seed=1))
    cache = tmp_path / "cache"
    digest = json.loads((first / "card.json").read_text())["files"]["model.onnx"]["sha256"]
    with front_door(repository, workers=2, SERVING_MODEL_CACHE=str(cache),
                    SERVING_POLL_INTERVAL="1") as server:
        wait_for(lambda: len(serving_processes(server)) == 4)
        processes = serving_processes(server)
        weights = weights_files(cache)[digest]
        assert weights.stat().st_size > 30 << 20
        for pid in processes:
            mapped = mapping(pid, weights)
            assert mapped.get("mappings"), f"process {pid} does not map {weights}"
            assert mapped.get("Private_Dirty", 0) == 0, f"process {pid} copied the weights: {mapped}"
        expected = run(first / "model.onnx", {"image": IMAGE})["features"]
        for _ in processes:  # requests reach every worker, in turn
            np.testing.assert_allclose(rest_features(server.url, 1), expected, rtol=TOLERANCE, atol=TOLERANCE)
        np.testing.assert_allclose(grpc_features(server.grpc, 1), expected, rtol=TOLERANCE, atol=TOLERANCE)

        # A new version, polled in, is mapped by all; the first one, its folder removed, by none.
        second = write_version(repository, "conv", 2, conv_network(channels=512, layers=5, seed=2))
        new_digest = json.loads((second / "card.json").read_text())["files"]["model.onnx"]["sha256"]
        wait_for(lambda: new_digest in weights_files(cache), seconds=60)
        new_weights = weights_files(cache)[new_digest]
        wait_for(lambda: all(mapping(pid, new_weights).get("mappings") for pid in processes), seconds=60)
        shutil.rmtree(first)
        deadline = time.monotonic() + 30
        while any(mapping(pid, weights).get("mappings") for pid in processes):
            assert time.monotonic() < deadline, "the unloaded version's weights are still mapped"
            time.sleep(0.5)
        np.testing.assert_allclose(rest_features(server.url, 2), run(second / "model.onnx", {"image": IMAGE})
                                   ["features"], rtol=TOLERANCE, atol=TOLERANCE)
        assert serving_processes(server) == processes  # no process died on the way
