"""deploy/kserve/: every manifest against KServe's own CRDs, strictly (tests/kserve_crds.py), and
the contract between the ClusterServingRuntime, the InferenceService that names it, and the
server the runtime's container runs.

The pod-level numbers (workers and CPU, grace period, probes, lock-down) are checked with the
other deployments in tests/test_manifests.py.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from kserve_crds import load_crds, problems, scope, validator
from test_manifests import with_api_keys

from service.grpc.server import SERVICE
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
KSERVE = ROOT / "deploy" / "kserve"
RUNTIME = KSERVE / "clusterservingruntime.yaml"
RUNTIME_INFERENCE_SERVICE = KSERVE / "inferenceservice-runtime.yaml"
CUSTOM_INFERENCE_SERVICE = KSERVE / "inferenceservice.yaml"

# KServe's names for protocols (pkg/constants/constants.go, InferenceServiceProtocol, at the
# CRDs' commit), and the ones this server speaks: the Open Inference Protocol over REST and gRPC.
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
SERVED_PROTOCOLS = ["v2", "grpc-v2"]
# Where KServe puts what storageUri names (DefaultModelLocalMountPath), and the HTTP port it
# assumes of a runtime container (InferenceServiceDefaultHttpPort).
KSERVE_MODEL_DIR = Path("/mnt/models")
KSERVE_HTTP_PORT = 8080
# The one container of a runtime that KServe merges with the InferenceService's model spec.
KSERVE_CONTAINER = "kserve-container"
# What an InferenceService's model block may say without changing the runtime's container.
MODEL_SELECTION_FIELDS = {"modelFormat", "runtime", "protocolVersion", "storageUri"}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def single_document(path: Path) -> dict:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(documents) == 1, path
    return documents[0]


@pytest.fixture(scope="module")
def crds():
    return load_crds()


@pytest.fixture(scope="module")
def runtime():
    return single_document(RUNTIME)


@pytest.fixture(scope="module")
def isvc():
    return single_document(RUNTIME_INFERENCE_SERVICE)


def container_of(runtime: dict) -> dict:
    (container,) = runtime["spec"]["containers"]
    return container


def settings_of(container: dict) -> Settings:
    """What the server reads from the container's environment (its own Settings.load)."""
    return Settings.load(environ={e["name"]: e["value"] for e in container["env"]})


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def is_grpc_port(port: dict) -> bool:
    """KServe's rule for a Service port's appProtocol h2c (service_reconciler.go, isGrpcPort)."""
    return "grpc" in port["name"] or "h2c" in port["name"]


# --- KServe's CRDs, strictly -------------------------------------------------------------------

@pytest.mark.parametrize(("path", "api_keys"), [
    (RUNTIME, False), (RUNTIME_INFERENCE_SERVICE, False), (CUSTOM_INFERENCE_SERVICE, False),
    (RUNTIME_INFERENCE_SERVICE, True), (CUSTOM_INFERENCE_SERVICE, True)],
    ids=lambda value: value.name if isinstance(value, Path) else "api-keys" if value else "")
def test_manifest_is_valid_against_kserves_crd(path, api_keys, crds):
    """As written, and with the API-key lines uncommented (tests/test_manifests.py, with_api_keys)."""
    document = yaml.safe_load(with_api_keys(path.read_text())) if api_keys else single_document(path)
    assert problems(validator(crds, document), document) == []
    # metadata is ObjectMeta, which the CRD leaves open: the fields used here, and a namespace
    # exactly when the resource is namespaced.
    metadata = document["metadata"]
    assert set(metadata) <= {"name", "namespace", "labels", "annotations"}, path.name
    assert DNS_LABEL.fullmatch(metadata["name"]), path.name
    namespaced = scope(crds, document["apiVersion"], document["kind"]) == "Namespaced"
    assert ("namespace" in metadata) == namespaced, path.name


def test_strict_schemas_are_valid_json_schemas(crds, runtime, isvc):
    for document in (runtime, isvc):
        checker = validator(crds, document)
        checker.check_schema(checker.schema)


def test_runtime_also_works_as_a_namespaced_serving_runtime(crds, runtime):
    """deploy/README.md offers `kind: ServingRuntime` with a namespace for one namespace only."""
    namespaced = {**copy.deepcopy(runtime), "kind": "ServingRuntime"}
    namespaced["metadata"]["namespace"] = "onnx-serving"
    assert scope(crds, namespaced["apiVersion"], "ServingRuntime") == "Namespaced"
    assert problems(validator(crds, namespaced), namespaced) == []


def rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


# Each change makes a manifest wrong in a way the API server refuses; the strict schema must name it.
MISSPELT = {
    "supportedModelFormat": ("runtime", lambda d: rename(d["spec"], "supportedModelFormats",
                                                         "supportedModelFormat")),
    "protocolVersion": ("runtime", lambda d: rename(d["spec"], "protocolVersions", "protocolVersion")),
    "volumeMount": ("runtime", lambda d: rename(container_of(d), "volumeMounts", "volumeMount")),
    "containerPorts": ("runtime", lambda d: rename(container_of(d)["ports"][0], "containerPort",
                                                   "containerPorts")),
    "storageURI": ("isvc", lambda d: rename(d["spec"]["predictor"]["model"], "storageUri", "storageURI")),
    "format": ("isvc", lambda d: rename(d["spec"]["predictor"]["model"], "modelFormat", "format")),
    "versions": ("isvc", lambda d: rename(d["spec"]["predictor"]["model"]["modelFormat"], "version",
                                          "versions")),
}
WRONG_TYPE = {
    "port number as text": ("runtime", lambda d: container_of(d)["ports"][0].update(containerPort="8080")),
    "autoSelect as text": ("runtime", lambda d: d["spec"]["supportedModelFormats"][0].update(
        autoSelect="false")),
    "priority below 1": ("runtime", lambda d: d["spec"]["supportedModelFormats"][0].update(priority=0)),
    "protocolVersions not a list": ("runtime", lambda d: d["spec"].update(protocolVersions="v2")),
    "env value a number": ("runtime", lambda d: container_of(d)["env"][0].update(value=8080)),
    "probe port a list": ("runtime", lambda d: container_of(d)["readinessProbe"]["httpGet"].update(
        port=[8080])),
    "cpu limit a list": ("runtime", lambda d: container_of(d)["resources"]["limits"].update(cpu=["2"])),
    "model format a string": ("isvc", lambda d: d["spec"]["predictor"]["model"].update(modelFormat="onnx")),
    "minReplicas as text": ("isvc", lambda d: d["spec"]["predictor"].update(minReplicas="2")),
}


@pytest.mark.parametrize("field", MISSPELT)
def test_a_misspelt_field_is_refused(field, crds, runtime, isvc):
    which, change = MISSPELT[field]
    document = copy.deepcopy({"runtime": runtime, "isvc": isvc}[which])
    change(document)
    found = problems(validator(crds, document), document)
    assert any(f"'{field}' was unexpected" in p for p in found), found
    # The CRD as written lets it through: the strictness is ours (tests/kserve_crds.py).
    plain = problems(validator(crds, document, strictly=False), document)
    assert not any(f"'{field}'" in p for p in plain), plain


@pytest.mark.parametrize("case", WRONG_TYPE)
def test_a_wrong_type_is_refused(case, crds, runtime, isvc):
    which, change = WRONG_TYPE[case]
    document = copy.deepcopy({"runtime": runtime, "isvc": isvc}[which])
    change(document)
    assert problems(validator(crds, document), document), case


def test_int_or_string_fields_take_either(crds, runtime):
    """A probe's port is a number or a port name; a quantity is a number or a string."""
    for port, cpu in ((8080, 2), ("http1", "2000m")):
        document = copy.deepcopy(runtime)
        container_of(document)["readinessProbe"]["httpGet"]["port"] = port
        container_of(document)["resources"]["limits"]["cpu"] = cpu
        assert problems(validator(crds, document), document) == [], (port, cpu)


# --- the runtime and the server ------------------------------------------------------------------

def test_runtime_is_one_kserve_container_for_onnx(runtime):
    assert runtime["kind"] == "ClusterServingRuntime"
    assert container_of(runtime)["name"] == KSERVE_CONTAINER
    formats = {f["name"]: f for f in runtime["spec"]["supportedModelFormats"]}
    assert "onnx" in formats
    # InferenceServices name it: it must not take over those that ask for plain ONNX models.
    assert formats["onnx"].get("autoSelect", False) is False
    assert "multiModel" not in runtime["spec"] and "workerSpec" not in runtime["spec"]


def test_runtime_lists_exactly_the_protocols_served(runtime):
    protocols = runtime["spec"]["protocolVersions"]
    assert set(protocols) <= KSERVE_PROTOCOLS
    assert protocols == SERVED_PROTOCOLS


def test_the_server_speaks_v2_rest(client):
    assert client.get("/v2").status_code == 200
    assert client.get("/v2/models/demand/ready").status_code == 200


def test_the_server_speaks_kserves_grpc_v2():
    # KServe's grpc-v2 is the service of its grpc_predict_v2.proto (tests/test_grpc.py calls it).
    assert SERVICE == "inference.GRPCInferenceService"


def test_tf_serving_rest_is_not_kserves_v1(client):
    """KServe's v1 answers GET /v1/models/<name> with {"name", "ready"} and lists models at
    /v1/models; TF Serving, which the server follows, does neither."""
    status = client.get("/v1/models/demand")
    assert status.status_code == 200 and "ready" not in status.get_json()
    assert "model_version_status" in status.get_json()
    assert client.get("/v1/models").status_code == 404


def test_runtime_ports_are_what_the_server_binds(runtime):
    container = container_of(runtime)
    settings = settings_of(container)
    http, grpc = container["ports"]
    # REST first: KServe maps the first port to its Service's port 80; gRPC named as KServe
    # recognises it (appProtocol h2c); nothing else.
    assert http["containerPort"] == port_of(settings.bind) == KSERVE_HTTP_PORT
    assert not is_grpc_port(http)
    assert grpc["containerPort"] == port_of(settings.grpc_bind)
    assert is_grpc_port(grpc)
    assert {p["protocol"] for p in container["ports"]} == {"TCP"}
    assert settings.front_door == "nginx", "the front door buffers clients; gRPC runs beside it"


def test_runtime_reads_the_models_where_kserve_puts_them(runtime):
    assert settings_of(container_of(runtime)).model_repository == KSERVE_MODEL_DIR
    # ... and writes nowhere there: the only writable mounts are /tmp and the model cache.
    mounts = [m["mountPath"] for m in container_of(runtime)["volumeMounts"]]
    assert mounts == ["/tmp", "/var/cache/onnx-serving"]


def test_runtime_metrics_annotations_point_at_the_server(runtime, client):
    annotations = runtime["spec"]["annotations"]
    http = container_of(runtime)["ports"][0]["containerPort"]
    for prefix in ("prometheus.io", "prometheus.kserve.io"):
        assert annotations[f"{prefix}/port"] == str(http)
        assert client.get(annotations[f"{prefix}/path"]).status_code == 200


# --- the InferenceService that uses it -----------------------------------------------------------

def test_inference_service_selects_the_runtime(isvc, runtime):
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    # KServe's rule (predictor_model.go, RuntimeSupportsModel): the format's name, and its
    # version when the InferenceService gives one, among the runtime's formats.
    wanted = model["modelFormat"]
    offered = [f for f in runtime["spec"]["supportedModelFormats"] if f["name"] == wanted["name"]]
    assert offered, wanted
    assert "version" not in wanted or wanted["version"] in {f.get("version") for f in offered}
    # Named, so that KServe checks it against the runtime's list.
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]


def test_inference_service_takes_the_runtimes_container_as_it_is(isvc):
    predictor = isvc["spec"]["predictor"]
    assert set(predictor["model"]) == MODEL_SELECTION_FIELDS
    assert "containers" not in predictor  # they would run beside the kserve-container
    # With API keys, the model block adds a variable and a mount to the container, nothing else.
    keyed = yaml.safe_load(with_api_keys(RUNTIME_INFERENCE_SERVICE.read_text()))["spec"]["predictor"]
    assert set(keyed["model"]) == MODEL_SELECTION_FIELDS | {"env", "volumeMounts"}
    assert [e["name"] for e in keyed["model"]["env"]] == ["SERVING_API_KEYS_FILE"]


def test_inference_service_names_a_model_repository(isvc):
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    scheme, _, location = uri.partition("://")
    assert scheme in {"pvc", "s3", "gs", "https", "hdfs", "webhdfs", "oci", "hf"} and location, uri
    if scheme == "pvc":  # pvc://<claim>[/<path>], mounted directly, so no init container to harden
        assert DNS_LABEL.fullmatch(location.split("/")[0]), uri


def test_inference_service_runs_like_the_custom_one(isvc):
    """Same deployment mode, scaling and pod-level settings as deploy/kserve/inferenceservice.yaml."""
    custom = single_document(CUSTOM_INFERENCE_SERVICE)
    assert isvc["metadata"]["annotations"] == custom["metadata"]["annotations"]
    assert isvc["metadata"]["namespace"] == custom["metadata"]["namespace"]
    assert isvc["metadata"]["name"] != custom["metadata"]["name"], "either can run beside the other"
    ours, theirs = isvc["spec"]["predictor"], custom["spec"]["predictor"]
    for field in ("minReplicas", "maxReplicas", "scaleTarget", "automountServiceAccountToken",
                  "enableServiceLinks", "terminationGracePeriodSeconds", "securityContext"):
        assert ours[field] == theirs[field], field
