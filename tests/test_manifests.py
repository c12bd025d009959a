"""deploy/: the kustomize base and overlay rendered and validated offline, the KServe resources, the
numbers that must agree (workers and CPU, grace period and drain time, probes and routes), and
checkov on the manifests and the Dockerfile. (tests/test_kserve_runtime.py checks the KServe
resources against KServe's CRDs, and the runtime against the server.)

Rendering uses tests/kustomize_lite.py (see there why); where kubectl is installed, its
`kubectl kustomize` must render the same objects. Validation uses kubernetes-validate's strict
schemas (no unknown fields) for fixed Kubernetes versions.
"""

from __future__ import annotations

import copy
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml
from kustomize_lite import build

from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = {
    "base": DEPLOY / "kubernetes" / "base",
    "overlay": DEPLOY / "kubernetes" / "overlays" / "example",
    "overlay-api-keys": DEPLOY / "kubernetes" / "overlays" / "example-api-keys",
}
INFERENCE_SERVICE = DEPLOY / "kserve" / "inferenceservice.yaml"
RUNTIME = DEPLOY / "kserve" / "clusterservingruntime.yaml"
RUNTIME_INFERENCE_SERVICE = DEPLOY / "kserve" / "inferenceservice-runtime.yaml"
KSERVE_CRDS = DEPLOY / "kserve" / "crds"  # KServe's own files, for validation: not ours to lint
CHECKOV_CONFIG = DEPLOY / ".checkov.yaml"
# The oldest Kubernetes minor the manifests support, and the newest the pinned
# kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.30", "1.37")

IMAGE_NAME = "onnx-serving"
PORT = 8000
GRPC_PORT = 8081
UID = 10001
CACHE = "/var/cache/onnx-serving"  # the model cache: SERVING_MODEL_CACHE in the image, an emptyDir in pods
LIVE, READY, METRICS = "/v2/health/live", "/v2/health/ready", "/metrics"
EXPECTED_KINDS = {
    "base": {"Namespace", "ServiceAccount", "Deployment", "Service", "HorizontalPodAutoscaler",
             "PodDisruptionBudget", "NetworkPolicy"},
}
EXPECTED_KINDS["overlay"] = EXPECTED_KINDS["base"] | {"PersistentVolumeClaim"}
EXPECTED_KINDS["overlay-api-keys"] = EXPECTED_KINDS["overlay"]
# API keys, optional: the component deploy/kubernetes/components/api-keys, and in the KServe
# examples the commented lines that end in API_KEYS_TAG (with_api_keys uncomments them).
API_KEYS_SECRET = "onnx-serving-api-keys"
API_KEYS_TAG = "  # api-keys"

# What a v1beta1 PredictorSpec holds besides the inline PodSpec (ComponentExtensionSpec), and
# its one-of implementations, of which a custom predictor (containers) uses none.
KSERVE_EXTENSION_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency", "timeout",
    "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy",
}
KSERVE_IMPLEMENTATIONS = {
    "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml",
    "lightgbm", "paddle", "model", "storageUris", "workerSpec",
}


# --- rendering ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rendered():
    return {name: build(path) for name, path in KUSTOMIZATIONS.items()}


def with_api_keys(text: str) -> str:
    """A KServe example with its API-key lines (commented, each ending in API_KEYS_TAG) uncommented."""
    lines = re.findall(rf"^\s*# .*{re.escape(API_KEYS_TAG)}$", text, flags=re.M)
    assert lines, "no API-key lines to uncomment"
    return re.sub(rf"^(\s*)# (.*){re.escape(API_KEYS_TAG)}$", r"\1\2", text, flags=re.M)


def single_document(path: Path, api_keys: bool = False) -> dict:
    text = path.read_text()
    documents = [d for d in yaml.safe_load_all(with_api_keys(text) if api_keys else text) if d]
    assert len(documents) == 1, path
    return documents[0]


@pytest.fixture(scope="module")
def isvc():
    return single_document(INFERENCE_SERVICE)


def kserve_runtime_pod(api_keys: bool) -> tuple[dict, dict]:
    """(pod spec, pod annotations) that KServe makes of the runtime and the InferenceService
    naming it: the runtime's containers, volumes and annotations, the predictor's pod-level
    fields, and the model block's env and volume mounts added to the container (all it may add:
    tests/test_kserve_runtime.py checks)."""
    runtime = single_document(RUNTIME)["spec"]
    predictor = single_document(RUNTIME_INFERENCE_SERVICE, api_keys)["spec"]["predictor"]
    spec = {k: v for k, v in predictor.items() if k not in KSERVE_EXTENSION_FIELDS | KSERVE_IMPLEMENTATIONS}
    (container,) = runtime["containers"]
    container = {**container, **{field: container.get(field, []) + predictor["model"][field]
                                 for field in ("env", "volumeMounts") if field in predictor["model"]}}
    spec["containers"] = [container]
    spec["volumes"] = runtime.get("volumes", []) + spec.get("volumes", [])
    return spec, {**runtime.get("annotations", {}), **predictor.get("annotations", {})}


@pytest.fixture(scope="module")
def runtime_pod():
    return kserve_runtime_pod(api_keys=False)


def one(resources: list[dict], kind: str) -> dict:
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def kserve_pod_spec(isvc: dict) -> dict:
    predictor = isvc["spec"]["predictor"]
    return {k: v for k, v in predictor.items() if k not in KSERVE_EXTENSION_FIELDS}


POD_SPECS = ["base", "overlay", "overlay-api-keys", "kserve", "kserve-api-keys", "kserve-runtime",
             "kserve-runtime-api-keys"]


def pod_of(where: str, rendered: dict) -> tuple[str, dict, dict]:
    """(where, pod spec, pod annotations) of one way the server is deployed (POD_SPECS)."""
    api_keys = where.endswith("-api-keys")
    if where.startswith("kserve-runtime"):
        return (where, *kserve_runtime_pod(api_keys))
    if where.startswith("kserve"):
        isvc = single_document(INFERENCE_SERVICE, api_keys)
        return where, kserve_pod_spec(isvc), isvc["spec"]["predictor"].get("annotations", {})
    template = one(rendered[where], "Deployment")["spec"]["template"]
    return where, template["spec"], template["metadata"].get("annotations", {})


@pytest.fixture(scope="module", params=POD_SPECS)
def pod(request, rendered):
    return pod_of(request.param, rendered)


def server(pod_spec: dict) -> dict:
    assert len(pod_spec["containers"]) == 1, "one container per pod: the server"
    return pod_spec["containers"][0]


def env(container: dict) -> dict:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def image_env() -> dict:
    """The SERVING_* variables the serving image sets (Dockerfile, stage serve)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    return dict(re.findall(r"\b(SERVING_[A-Z_]+)=(\S+)", dockerfile[dockerfile.index("AS serve"):]))


def served_ports(container: dict) -> tuple[int, int]:
    """The REST and gRPC ports the server binds in this container: its own Settings, read from
    the image's environment and the container's."""
    settings = Settings.load(environ={**image_env(), **env(container)})
    return int(settings.bind.rsplit(":", 1)[1]), int(settings.grpc_bind.rsplit(":", 1)[1])


def port_number(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert named, f"no container port named {port!r}"
    return named[0]


def cpu_cores(quantity) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def prestop_seconds(container: dict) -> float:
    handler = container["lifecycle"]["preStop"]
    if "sleep" in handler:
        return handler["sleep"]["seconds"]
    command = handler["exec"]["command"]
    assert command[:2] == ["python3", "-c"], command
    seconds = re.fullmatch(r"import time; time\.sleep\((\d+(?:\.\d+)?)\)", command[2])
    assert seconds, f"preStop is not a plain sleep: {command}"
    return float(seconds[1])


def test_base_and_overlay_render_the_expected_resources(rendered):
    for name, resources in rendered.items():
        kinds = [r["kind"] for r in resources]
        assert set(kinds) == EXPECTED_KINDS[name] and len(kinds) == len(set(kinds)), (name, kinds)
        assert all(r["metadata"]["name"].startswith("onnx-serving") for r in resources)


def test_overlay_changes_namespace_image_and_models_volume(rendered):
    base, overlay = (one(rendered[n], "Deployment") for n in ("base", "overlay"))
    namespaces = {r["metadata"].get("namespace") for r in rendered["overlay"] if r["kind"] != "Namespace"}
    assert namespaces == {one(rendered["overlay"], "Namespace")["metadata"]["name"]}
    assert namespaces != {base["metadata"]["namespace"]}
    image = server(overlay["spec"]["template"]["spec"])["image"]
    assert image == "registry.example.com/ml/onnx-serving:0.1.0"

    # The volume variant: the claim mounted read-only where the server looks for its models.
    spec = overlay["spec"]["template"]["spec"]
    container = server(spec)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    models = mounts[env(container)["SERVING_MODEL_REPOSITORY"]]
    assert models["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == models["name"])
    claim = one(rendered["overlay"], "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    # ... and nothing else of the base's pod changed.
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp", CACHE, "/models"}
    base_spec = base["spec"]["template"]["spec"]
    assert {k: v for k, v in spec.items() if k not in ("containers", "volumes")} == {
        k: v for k, v in base_spec.items() if k not in ("containers", "volumes")}


def test_a_component_is_not_rendered_alone():
    with pytest.raises(ValueError, match="expected a Kustomization"):
        build(DEPLOY / "kubernetes" / "components" / "api-keys")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renderer_agrees_with_kubectl_kustomize(name, rendered):
    """kustomize_lite renders exactly what kustomize itself renders (order aside)."""
    output = subprocess.run(["kubectl", "kustomize", str(KUSTOMIZATIONS[name])], capture_output=True,
                            text=True, timeout=60, check=True).stdout

    def key(resource):
        return resource["kind"], resource["metadata"].get("namespace", ""), resource["metadata"]["name"]

    theirs = sorted((d for d in yaml.safe_load_all(output) if d), key=key)
    assert sorted(rendered[name], key=key) == theirs


# --- schema validation -------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_rendered_manifests_are_valid_kubernetes(name, version, rendered):
    for resource in rendered[name]:
        validate_strictly(resource, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kserve_predictor_pod_spec_is_a_valid_pod_spec(version, rendered):
    """The predictor inlines a core/v1 PodSpec, or KServe makes one of it and the runtime: checked
    as a Pod, strictly (no unknown fields), with and without the API keys."""
    for where in (where for where in POD_SPECS if where.startswith("kserve")):
        _, spec, _ = pod_of(where, rendered)
        validate_strictly({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": where}, "spec": spec},
                          version)


def validate_strictly(resource: dict, version: str) -> None:
    where = f"{resource['kind']}/{resource['metadata']['name']}"
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        pytest.fail(f"{where} is not valid Kubernetes {version}: {path}: {error.message}")
    except kubernetes_validate.SchemaNotFoundError as error:
        pytest.fail(f"{where}: {error.message}")


# --- the numbers that must agree ---------------------------------------------------------------

def test_workers_equal_the_cpu_limit_in_whole_cores(pod):
    where, spec, _ = pod
    container = server(spec)
    limit = cpu_cores(container["resources"]["limits"]["cpu"])
    assert limit == int(limit) >= 1, f"{where}: the CPU limit must be whole cores, not {limit}"
    assert int(env(container)["SERVING_WORKERS"]) == limit, where
    # Requested as much as the limit: the workers get the cores they are sized for.
    assert cpu_cores(container["resources"]["requests"]["cpu"]) == limit, where
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, where


def test_grace_period_covers_prestop_and_gunicorn_drain(pod):
    where, spec, _ = pod
    container = server(spec)
    drain = int(env(container)["SERVING_GRACEFUL_TIMEOUT"])
    prestop = prestop_seconds(container)
    assert 3 <= prestop <= 15, f"{where}: preStop {prestop} s"
    assert spec["terminationGracePeriodSeconds"] >= prestop + drain, where
    assert spec["terminationGracePeriodSeconds"] > prestop + drain, f"{where}: leave a margin"


def test_gunicorn_reads_the_settings_the_manifests_set(pod, monkeypatch, tmp_path):
    """service/process/gunicorn.conf.py under the container's environment: the workers and drain time."""
    where, spec, _ = pod
    variables = env(server(spec))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # or the config makes its own
    config = runpy.run_path(str(ROOT / "service" / "process" / "gunicorn.conf.py"))
    assert config["workers"] == int(variables["SERVING_WORKERS"]), where
    assert config["graceful_timeout"] == int(variables["SERVING_GRACEFUL_TIMEOUT"]), where
    assert config["bind"].rsplit(":", 1)[1] == str(served_ports(server(spec))[0]), where
    assert config["worker_class"] == "sync", where


def test_probes_hit_the_health_routes_on_the_server_port(pod):
    where, spec, _ = pod
    container = server(spec)
    kinds = ("startupProbe", "livenessProbe", "readinessProbe")
    probes = {kind: container[kind]["httpGet"] for kind in kinds}
    assert probes["startupProbe"]["path"] == LIVE, where
    assert probes["livenessProbe"]["path"] == LIVE, where
    assert probes["readinessProbe"]["path"] == READY, where
    http, grpc = served_ports(container)
    for kind, action in probes.items():
        assert port_number(container, action["port"]) == http, (where, kind)
        assert action.get("scheme", "HTTP") == "HTTP", (where, kind)
    assert [p["containerPort"] for p in container["ports"]] == [http, grpc], where
    assert container["ports"][1]["name"] in ("grpc", "h2c"), where  # KServe's names for gRPC
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30, f"{where}: give models time to load"


def test_prometheus_scrapes_metrics_on_the_server_port(pod):
    where, spec, annotations = pod
    assert annotations["prometheus.io/scrape"] == "true", where
    assert annotations["prometheus.io/port"] == str(served_ports(server(spec))[0]), where
    assert annotations["prometheus.io/path"] == METRICS, where


@pytest.mark.parametrize("path", [LIVE, READY, METRICS])
def test_the_probed_routes_answer(client, path):
    assert client.get(path).status_code == 200


def test_pod_runs_locked_down(pod):
    where, spec, _ = pod
    assert spec["securityContext"]["runAsNonRoot"] is True, where
    assert spec["securityContext"]["runAsUser"] == UID, where
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
    assert spec["automountServiceAccountToken"] is False, where
    context = server(spec)["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == UID, where
    assert context["readOnlyRootFilesystem"] is True, where
    assert context["allowPrivilegeEscalation"] is False, where
    assert context["capabilities"] == {"drop": ["ALL"]}, where
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
    assert context.get("privileged", False) is False, where
    # The only writable places are /tmp and the model cache, emptyDirs (the image needs nothing else).
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = [m for m in server(spec)["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/tmp", CACHE], where
    assert all("emptyDir" in volumes[mount["name"]] for mount in writable), where
    # The cache on disk: its pages are page cache, not an in-memory emptyDir counted in full.
    assert "medium" not in volumes[writable[1]["name"]]["emptyDir"], where


def test_image_user_and_port_are_what_the_manifests_assume():
    dockerfile = (ROOT / "Dockerfile").read_text()
    serve = dockerfile[dockerfile.index("AS serve"):]
    assert re.search(rf"^USER {UID}$", serve, re.M)
    assert re.search(rf"^EXPOSE {PORT} {GRPC_PORT}$", serve, re.M)
    assert f"SERVING_BIND=0.0.0.0:{PORT}" in serve
    assert "SERVING_MODEL_REPOSITORY=/models" in serve
    assert f"SERVING_MODEL_CACHE={CACHE}" in serve and f"-o serving -g serving {CACHE}" in serve
    assert '"/usr/bin/tini", "--"' in serve  # SIGTERM reaches python -m service, which drains
    assert 'CMD ["python3", "-m", "service"]' in serve  # nginx in front of gunicorn


def test_rollout_never_drops_below_the_desired_replicas(rendered):
    for name, resources in rendered.items():
        deployment = one(resources, "Deployment")
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name
        assert "replicas" not in deployment["spec"], f"{name}: the HPA owns the replica count"


def test_service_hpa_pdb_and_network_policy_select_the_pods(rendered):
    for name, resources in rendered.items():
        deployment = one(resources, "Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        container = server(deployment["spec"]["template"]["spec"])
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

        service = one(resources, "Service")
        assert service["spec"]["selector"].items() <= labels.items(), name
        http, grpc = service["spec"]["ports"]
        assert http["name"] and port_number(container, http["targetPort"]) == PORT, name
        assert port_number(container, grpc["targetPort"]) == GRPC_PORT, name
        assert grpc["appProtocol"] == "kubernetes.io/h2c", name

        hpa = one(resources, "HorizontalPodAutoscaler")
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"]), name
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], name

        pdb = one(resources, "PodDisruptionBudget")
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        # Never blocks a drain for good: with minReplicas pods, one may always go.
        assert pdb["spec"].get("maxUnavailable", 0) >= 1 or (
            pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]), name

        policy = one(resources, "NetworkPolicy")
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items(), name
        ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
        assert ports == [PORT, GRPC_PORT], name

        account = one(resources, "ServiceAccount")
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


# --- the KServe InferenceService -----------------------------------------------------------------

def test_inference_service_is_a_v1beta1_custom_predictor(isvc):
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])
    assert set(isvc) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(isvc["spec"]) == {"predictor"}
    predictor = isvc["spec"]["predictor"]
    # A custom predictor: containers, and none of the one-of implementations beside them.
    assert not set(predictor) & KSERVE_IMPLEMENTATIONS
    # The rest is PodSpec (checked strictly above) or ComponentExtensionSpec. `protocolVersion`
    # is not among them: for a custom container KServe reads the PROTOCOL variable instead.
    assert "protocolVersion" not in predictor
    mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    assert mode in ("RawDeployment", "Standard"), "the preStop hook and grace period need a Deployment"


def test_inference_service_runs_the_image_on_v2_rest(isvc, rendered):
    container = server(isvc["spec"]["predictor"])
    assert container["name"] == "kserve-container"
    deployment_image = server(one(rendered["base"], "Deployment")["spec"]["template"]["spec"])["image"]
    assert container["image"] == deployment_image
    assert container["image"].split(":")[0] == IMAGE_NAME
    # REST first (KServe maps the first port to its Service's port 80), gRPC named h2c.
    assert container["ports"] == [{"name": "http1", "containerPort": PORT, "protocol": "TCP"},
                                  {"name": "h2c", "containerPort": GRPC_PORT, "protocol": "TCP"}]
    assert env(container)["PROTOCOL"] == "v2"
    assert env(container)["SERVING_MODEL_REPOSITORY"] == "/models"


def test_inference_service_scales_like_the_deployment(isvc, rendered):
    predictor = isvc["spec"]["predictor"]
    hpa = one(rendered["base"], "HorizontalPodAutoscaler")["spec"]
    assert predictor["scaleTarget"] == hpa["metrics"][0]["resource"]["target"]["averageUtilization"]
    assert predictor.get("scaleMetric", "cpu") == "cpu"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    # Same resources, probes, drain and hardening as the Deployment's container.
    deployment = one(rendered["base"], "Deployment")["spec"]["template"]["spec"]
    ours, theirs = server(predictor), server(deployment)
    for field in ("resources", "lifecycle", "securityContext"):
        assert ours[field] == theirs[field], field
    assert {k: v for k, v in env(ours).items() if k.startswith("SERVING_")}.items() <= env(theirs).items()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        strip = {"httpGet": {"port": None}}
        assert _without(ours[probe], strip) == _without(theirs[probe], strip), probe
    assert predictor["terminationGracePeriodSeconds"] == deployment["terminationGracePeriodSeconds"]


def test_kserve_runtime_runs_like_the_deployment(runtime_pod, rendered):
    """The runtime's container and the pod KServe makes of it: the Deployment's image, resources,
    probes (on its own port), drain and hardening, and its settings but for where it listens and
    where it finds the models."""
    spec, _ = runtime_pod
    deployment = one(rendered["base"], "Deployment")["spec"]["template"]["spec"]
    ours, theirs = server(spec), server(deployment)
    for field in ("image", "imagePullPolicy", "resources", "lifecycle", "securityContext"):
        assert ours[field] == theirs[field], field
    placement = {"SERVING_BIND", "SERVING_GRPC_BIND", "SERVING_MODEL_REPOSITORY"}
    assert {k: v for k, v in env(ours).items() if k not in placement} == {
        k: v for k, v in env(theirs).items() if k not in placement}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        strip = {"httpGet": {"port": None}}
        assert _without(ours[probe], strip) == _without(theirs[probe], strip), probe
    for field in ("terminationGracePeriodSeconds", "securityContext", "automountServiceAccountToken",
                  "enableServiceLinks"):
        assert spec[field] == deployment[field], field


def _without(probe: dict, fields: dict) -> dict:
    return {k: (_without(v, fields[k]) if isinstance(fields.get(k), dict) else v)
            for k, v in probe.items() if not (k in fields and fields[k] is None)}


# --- API keys from a Secret: only where asked for ----------------------------------------------

@pytest.mark.parametrize("where", POD_SPECS)
def test_api_keys_come_from_the_secret_only_where_asked_for(where, rendered):
    _, spec, _ = pod_of(where, rendered)
    container = server(spec)
    secrets = [volume for volume in spec["volumes"] if "secret" in volume]
    keys_file = env(container).get("SERVING_API_KEYS_FILE")
    if not where.endswith("-api-keys"):
        assert keys_file is None and not secrets, f"{where}: the examples run without a Secret"
        return
    (volume,) = secrets
    assert volume["secret"]["secretName"] == API_KEYS_SECRET, where
    # Without the Secret the pod waits, and never serves without keys.
    assert volume["secret"].get("optional", False) is False, where
    # Secret files belong to root: the server's user (no fsGroup) reads them as "others".
    assert volume["secret"]["defaultMode"] & 0o004 and not volume["secret"]["defaultMode"] & 0o222, where
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and "subPath" not in mount, where  # a subPath never sees a change
    # The file is the Secret's key `api-keys` (deploy/README.md), in the mounted folder.
    assert PurePosixPath(keys_file) == PurePosixPath(mount["mountPath"]) / "api-keys", where
    assert Settings.load(environ={**image_env(), **env(container)}).api_keys_file == Path(keys_file)


def without_api_keys(spec: dict) -> dict:
    """A pod spec without the API keys' variable, mount and volume."""
    spec = copy.deepcopy(spec)
    container = server(spec)
    container["env"] = [e for e in container["env"] if e["name"] != "SERVING_API_KEYS_FILE"]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "api-keys"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "api-keys"]
    return spec


@pytest.mark.parametrize("where", [where for where in POD_SPECS if where.endswith("-api-keys")])
def test_api_keys_change_nothing_else(where, rendered):
    plain = where.removesuffix("-api-keys")
    assert without_api_keys(pod_of(where, rendered)[1]) == pod_of(plain, rendered)[1]
    assert pod_of(where, rendered)[2] == pod_of(plain, rendered)[2]
    if plain in rendered:  # and in the other resources of an overlay
        assert [r for r in rendered[where] if r["kind"] != "Deployment"] == [
            r for r in rendered[plain] if r["kind"] != "Deployment"]


# --- checkov ---------------------------------------------------------------------------------------

def checkov_executable() -> str | None:
    """$CHECKOV, else checkov in its own venv under .venv/ (its pins clash with the project's),
    else beside this Python, else on PATH."""
    for candidate in (os.environ.get("CHECKOV"), ROOT / ".venv" / "checkov" / "bin" / "checkov",
                      Path(sys.executable).parent / "checkov", shutil.which("checkov")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def run_checkov(config: Path, files: list[Path]) -> list[dict]:
    executable = checkov_executable()
    if executable is None:
        message = "checkov is not installed (see tests/test_manifests.py, checkov_executable)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    command = [executable, "--config-file", str(config), "-o", "json"]
    for path in files:
        command += ["-f", str(path)]
    environment = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "ANSI_COLORS_DISABLED": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                               env=environment)
    assert completed.returncode in (0, 1), completed.stderr[-3000:]
    reports = json.loads(completed.stdout)
    return reports if isinstance(reports, list) else [reports]


@pytest.fixture(scope="module")
def checkov_files(rendered, tmp_path_factory):
    """Every YAML file in deploy/, the Dockerfile, and the overlays as rendered. (checkov has no
    checks for KServe's resources: tests/test_kserve_runtime.py validates them.)"""
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml")
                   and p != CHECKOV_CONFIG and KSERVE_CRDS not in p.parents)
    folder = tmp_path_factory.mktemp("checkov")
    overlay = folder / "rendered-overlay-example.yaml"
    overlay.write_text(yaml.safe_dump_all(rendered["overlay"], sort_keys=False))
    keyed = folder / "rendered-overlay-example-api-keys.yaml"
    keyed.write_text(yaml.safe_dump_all(rendered["overlay-api-keys"], sort_keys=False))
    return [*files, ROOT / "Dockerfile", overlay, keyed]


def accepted_checks() -> list[str]:
    return yaml.safe_load(CHECKOV_CONFIG.read_text())["skip-check"]


def test_checkov_finds_nothing_beyond_the_accepted_checks(checkov_files):
    reports = run_checkov(CHECKOV_CONFIG, checkov_files)
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})"
              for r in reports for c in r["results"]["failed_checks"]]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    for report in reports:
        summary = report["summary"]
        assert summary["parsing_errors"] == 0 and summary["passed"] > 0, report["check_type"]
        # Skipped here would mean a suppression outside deploy/.checkov.yaml.
        assert summary["skipped"] == 0, report["results"]["skipped_checks"]
    # Every workload file got checked, the raw ones and the rendered overlay.
    checked = {Path(c["file_path"]).name for r in reports for c in r["results"]["passed_checks"]}
    assert {"deployment.yaml", "service.yaml", "Dockerfile", "rendered-overlay-example.yaml",
            "rendered-overlay-example-api-keys.yaml"} <= checked


def test_checkov_accepted_checks_are_justified_and_all_needed(checkov_files, tmp_path):
    """Each accepted check has its reason beside it, and without the list exactly those fail."""
    lines = CHECKOV_CONFIG.read_text().splitlines()
    for check in accepted_checks():
        (index,) = [i for i, line in enumerate(lines) if line.strip() == f"- {check}"]
        assert lines[index - 1].strip().startswith("# ") and len(lines[index - 1].strip()) > 20, check

    config = yaml.safe_load(CHECKOV_CONFIG.read_text())
    del config["skip-check"]
    unskipped = tmp_path / "checkov.yaml"
    unskipped.write_text(yaml.safe_dump(config))
    reports = run_checkov(unskipped, checkov_files)
    failing = {c["check_id"] for r in reports for c in r["results"]["failed_checks"]}
    assert failing == set(accepted_checks())
