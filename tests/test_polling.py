"""Roll-outs without a signal: repository polling and version policies.

The policy format and the settings; the registry's refresh over temporary repositories (new,
removed, partial, broken and changed version folders, the three policies, a bad policy file);
the poller thread; then real servers under load with a poll interval of 1 s: a version renamed
into place and then removed (REST through nginx and gRPC, policy file changes on the way), a
version whose files arrive one by one, and a broken version, with every answer checked against
the NumPy forward propagation and every failed request counted.
"""

from __future__ import annotations

import gc
import http.client
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from service.core.dataplane import DataPlane
from service.core.errors import ModelNotFound, ModelNotReady
from service.repository import polling
from service.repository.registry import ModelRegistry
from service.repository.version_policy import VersionPolicy
from service.settings import Settings
from tests.conftest import MODELS, front_door, gunicorn, metric_value
from tests.test_reliability import DEMAND, EXPECTED, ClientThreads, Load, truncate, wait_for

INTERVAL = 1  # SERVING_POLL_INTERVAL of the servers started here


def write_version(repository: Path, name: str, version: int, *, damage=None, staged: bool = True) -> Path:
    """The committed version 1 of `name`, as `version` (its card says so). Staged: written under a
    hidden name and renamed into place, as `python -m training` does; else copied straight in."""
    target = repository / name / str(version)
    folder = repository / name / f".staging-{version}" if staged else target
    shutil.copytree(MODELS / name / "1", folder)
    card = json.loads((folder / "card.json").read_text())
    card["version"] = version
    (folder / "card.json").write_text(json.dumps(card))
    if damage is not None:
        damage(folder)
    return folder.rename(target) if staged else target


def write_policy(repository: Path, name: str, text: str) -> None:
    """Written beside and renamed into place, so a poll never reads half of it."""
    staging = repository / name / ".version_policy.json"
    staging.write_text(text)
    staging.rename(repository / name / "version_policy.json")


def events(changes) -> list[tuple]:
    return [(change.name, change.version, change.event) for change in changes]


def answer(model) -> float:
    """A loaded version's answer on the test row, by onnxruntime."""
    [output] = model.card.output_names
    return float(model.infer({"features": DEMAND}, [output])[output][0, 0])


# --- the policy format and the settings ----------------------------------------------------------

@pytest.mark.parametrize(("text", "policy"), [
    ('{"all": true}', VersionPolicy()),
    ('{"latest": 2}', VersionPolicy(latest=2)),
    ('{"specific": [3, 1]}', VersionPolicy(specific=frozenset({1, 3}))),
])
def test_a_policy_is_parsed(text, policy):
    assert VersionPolicy.parse(text) == policy
    assert VersionPolicy.parse(json.loads(text)) == policy
    assert VersionPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize("text", [
    '{"latest": 0}', '{"latest": true}', '{"latest": "2"}', '{"latest": 1.5}', '{"all": false}',
    '{"specific": []}', '{"specific": [1, -2]}', '{"specific": 1}', '{"latest": 1, "all": true}',
    '{"newest": 1}', "{}", "[1]", '"all"',
])
def test_a_bad_policy_says_what_is_allowed(text):
    with pytest.raises(ValueError, match=r'must be \{"all": true\}, \{"latest": N\}'):
        VersionPolicy.parse(text)


def test_a_policy_that_is_not_json_is_named_so():
    with pytest.raises(ValueError, match="not valid JSON"):
        VersionPolicy.parse("{latest: 1}")


@pytest.mark.parametrize(("policy", "served"), [
    (VersionPolicy(), [5, 4, 3, 2, 1]),
    (VersionPolicy(latest=2), [5, 4]),
    (VersionPolicy(specific=frozenset({1, 4})), [4, 1]),
])
def test_the_policy_decides_which_versions_serve(policy, served):
    chosen = []
    for version in (5, 4, 3, 2, 1):  # as the registry asks, highest first, all of them loading
        if policy.admits(version, len(chosen)):
            chosen.append(version)
    assert chosen == served


def test_the_settings(monkeypatch):
    assert Settings().poll_interval == 10 and Settings().version_policy == VersionPolicy()
    monkeypatch.setenv("SERVING_POLL_INTERVAL", "0")
    monkeypatch.setenv("SERVING_VERSION_POLICY", '{"latest": 1}')
    settings = Settings.load()
    assert settings.poll_interval == 0 and settings.version_policy == VersionPolicy(latest=1)
    assert Settings.load({"version_policy": {"specific": [2]}}).version_policy.specific == {2}


@pytest.mark.parametrize(("variable", "value"), [
    ("SERVING_POLL_INTERVAL", "-1"), ("SERVING_POLL_INTERVAL", "soon"), ("SERVING_POLL_INTERVAL", "1.5"),
    ("SERVING_VERSION_POLICY", "latest"), ("SERVING_VERSION_POLICY", '{"latest": 0}'),
])
def test_a_bad_setting_is_named(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        Settings.load()


# --- the registry's refresh ----------------------------------------------------------------------

@pytest.fixture()
def repository(tmp_path) -> Path:
    """demand version 1 alone."""
    write_version(tmp_path, "demand", 1)
    return tmp_path


def test_a_new_version_is_served_and_a_removed_one_unloaded(repository):
    models = ModelRegistry(repository).load()
    first = models.get("demand")
    assert models.refresh() == []  # nothing changed, nothing loaded again

    write_version(repository, "demand", 2)
    assert events(models.refresh()) == [("demand", 2, "loaded")]
    assert models.get("demand").version == 2 and models.get("demand", 1) is first
    assert abs(answer(models.get("demand")) - EXPECTED) <= 1e-6

    shutil.rmtree(repository / "demand" / "2")
    assert events(models.refresh()) == [("demand", 2, "unloaded")]
    assert models.get("demand") is first
    with pytest.raises(ModelNotFound):
        models.get("demand", 2)

    shutil.rmtree(repository / "demand")
    assert events(models.refresh()) == [("demand", 1, "unloaded")]
    with pytest.raises(ModelNotFound):
        models.get("demand")
    assert not models.ready and "holds no models" in models.repository_error


def test_a_partial_copy_is_refused_once_per_change_then_served(repository):
    models = ModelRegistry(repository).load()
    graph = (MODELS / "demand" / "1" / "model.onnx").read_bytes()
    folder = write_version(repository, "demand", 2, staged=False)
    (folder / "weights.npz").unlink()
    (folder / "model.onnx").write_bytes(graph[: len(graph) // 2])

    [change] = models.refresh()
    assert (change.event, change.version) == ("refused", 2) and "model.onnx does not match" in change.reason
    assert models.refresh() == []  # the same folder: neither tried nor reported again
    assert models.ready and models.get("demand").version == 1
    assert any("demand version 2" in refused for refused in models.refused())

    (folder / "model.onnx").write_bytes(graph)
    [change] = models.refresh()
    assert change.event == "refused" and "weights.npz is missing" in change.reason
    shutil.copy(MODELS / "demand" / "1" / "weights.npz", folder)
    assert events(models.refresh()) == [("demand", 2, "loaded")]
    assert models.get("demand").version == 2 and models.refused() == []


def test_a_loaded_version_whose_folder_breaks_keeps_serving_its_loaded_copy(repository):
    models = ModelRegistry(repository).load()
    loaded = models.get("demand")
    graph = repository / "demand" / "1" / "model.onnx"
    original = graph.read_bytes()
    truncate(graph)
    [change] = models.refresh()
    assert change.event == "kept" and "sha256" in change.reason
    assert models.get("demand") is loaded and models.ready
    assert models.refresh() == []

    graph.write_bytes(original)
    assert events(models.refresh()) == [("demand", 1, "reloaded")]
    assert models.get("demand") is not loaded
    assert abs(answer(models.get("demand")) - EXPECTED) <= 1e-6


def test_latest_counts_the_versions_that_load(repository):
    write_version(repository, "demand", 2)
    write_version(repository, "demand", 3, damage=lambda folder: truncate(folder / "model.onnx"))
    write_policy(repository, "demand", '{"latest": 1}')
    models = ModelRegistry(repository).load()
    # The broken newest version is refused and reported; the next one serves; the oldest is left out.
    assert models.get("demand").version == 2 and models.ready
    assert [r.split(":")[0] for r in models.refused()] == ["demand version 3"]
    index = {version: (ready, why) for name, version, ready, why in models.index() if name == "demand"}
    assert not index["1"][0] and index["1"][1].startswith('unloaded: the version policy {"latest": 1}')
    assert index["2"] == (True, "")
    assert not index["3"][0] and "sha256" in index["3"][1]
    with pytest.raises(ModelNotFound):
        models.get("demand", 1)

    write_policy(repository, "demand", '{"latest": 2}')
    assert events(models.refresh()) == [("demand", None, "policy"), ("demand", 1, "loaded")]

    shutil.rmtree(repository / "demand" / "3")
    write_version(repository, "demand", 3)
    assert events(models.refresh()) == [("demand", 3, "loaded"), ("demand", 1, "unloaded")]
    assert sorted(models.models["demand"]) == [2, 3] and models.refused() == []


def test_specific_versions_and_the_default_policy_from_the_settings(repository):
    write_version(repository, "demand", 2)
    models = ModelRegistry(repository, policy=VersionPolicy(specific=frozenset({1}))).load()
    assert sorted(models.models["demand"]) == [1] and list(models.unloaded["demand"]) == [2]

    write_policy(repository, "demand", '{"specific": [5]}')
    models.refresh()
    assert not models.ready and models.models == {}
    [reason] = models.unservable()
    assert 'the version policy {"specific": [5]} selects none of its versions (1, 2)' in reason
    with pytest.raises(ModelNotReady, match="selects none"):
        models.get("demand")

    (repository / "demand" / "version_policy.json").unlink()  # back to the default
    models.refresh()
    assert models.ready and sorted(models.models["demand"]) == [1]


def test_a_bad_policy_file_is_reported_and_the_policy_in_force_stays(repository):
    write_version(repository, "demand", 2)
    write_policy(repository, "demand", '{"latest": 1}')
    models = ModelRegistry(repository).load()
    assert sorted(models.models["demand"]) == [2]

    write_policy(repository, "demand", '{"latest": 1')
    assert events(models.refresh()) == [("demand", None, "bad policy")]
    assert models.ready and sorted(models.models["demand"]) == [2]
    [refused] = models.refused()
    assert refused.startswith("demand: version_policy.json is not valid JSON (") and "column 13" in refused
    assert models.refresh() == []  # reported once per change of the file

    fresh = ModelRegistry(repository).load()  # at start, the default policy: every version
    assert sorted(fresh.models["demand"]) == [1, 2] and fresh.refused()[0].startswith("demand: ")


def test_a_repository_that_cannot_be_listed_keeps_what_was_loaded(repository, tmp_path_factory):
    models = ModelRegistry(repository).load()
    moved = repository.rename(tmp_path_factory.mktemp("away") / "models")
    assert models.refresh() == [] and models.ready and models.get("demand").version == 1
    moved.rename(repository)
    assert models.refresh() == []


def test_a_repository_that_appears_after_the_start_is_served(tmp_path):
    models = ModelRegistry(tmp_path / "models").load()
    assert not models.ready and "is not a folder" in models.repository_error
    write_version(tmp_path / "models", "demand", 1)
    assert events(models.refresh()) == [("demand", 1, "loaded")] and models.ready


def test_the_poller_refreshes_and_ends_with_its_data_plane(repository):
    plane = DataPlane(ModelRegistry(repository), Settings())
    plane.refresh()
    thread = polling.start(plane, 1)
    write_version(repository, "demand", 2)
    deadline = time.monotonic() + 5
    while plane.registry.get("demand").version != 2:
        assert time.monotonic() < deadline, "not polled"
        time.sleep(0.1)
    del plane
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert polling.start(DataPlane(ModelRegistry(repository), Settings()), 0) is None  # 0: no polling


# --- real servers under load ---------------------------------------------------------------------

def rest_version(url: str) -> str:
    """The version answering a default-version request, on a fresh connection (any worker)."""
    connection = http.client.HTTPConnection(urlparse(url).netloc, timeout=10)
    try:
        connection.request("POST", "/v2/models/demand/infer", json.dumps({"inputs": [
            {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": DEMAND.tolist()}]}),
            {"Content-Type": "application/json"})
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 200, body
    assert abs(body["outputs"][0]["data"][0] - EXPECTED) <= 1e-6
    return body["model_version"]


def grpc_version(address: str) -> str:
    """The same over gRPC with tritonclient, on a channel of its own (any gRPC process)."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(address, channel_args=[("grpc.use_local_subchannel_pool", 1)])
    try:
        features = triton.InferInput("features", [1, 4], "FP32")
        features.set_data_from_numpy(DEMAND)
        result = client.infer("demand", [features])
    finally:
        client.close()
    [output] = result.get_response().outputs
    assert abs(result.as_numpy(output.name)[0, 0] - EXPECTED) <= 1e-6
    return result.get_response().model_version


def converge(probes: list, version: str, rounds: int = 12) -> float:
    """Seconds until `rounds` fresh requests of every probe all answer `version` (measured from
    the start of that round); fails after 15 s."""
    started = time.monotonic()
    while True:
        round_start = time.monotonic()
        if all(probe() == version for probe in probes for _ in range(rounds)):
            return round_start - started
        assert time.monotonic() - started < 15, f"version {version} not served everywhere after 15 s"


class GrpcLoad(ClientThreads):
    """Client threads, each on a channel of its own, sending default-version requests until
    stopped; every answer checked, every failure kept."""

    def __init__(self, address: str, threads: int = 2):
        super().__init__(threads)
        self.address, self.ok, self.failures = address, 0, []

    def run(self) -> None:
        import tritonclient.grpc as triton

        client = triton.InferenceServerClient(self.address,
                                              channel_args=[("grpc.use_local_subchannel_pool", 1)])
        features = triton.InferInput("features", [1, 4], "FP32")
        features.set_data_from_numpy(DEMAND)
        while not self.stopping.is_set():
            try:
                result = client.infer("demand", [features], client_timeout=10)
                [output] = result.get_response().outputs
                assert abs(result.as_numpy(output.name)[0, 0] - EXPECTED) <= 1e-6
                self.ok += 1
            except Exception as error:  # a failed call or a wrong number
                self.failures.append(f"{type(error).__name__}: {error}")
        client.close()


def repository_index(url: str) -> list[dict]:
    request = urllib.request.Request(f"{url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_roll_out_and_a_roll_back_under_load_fail_no_request(repository):
    """REST through nginx and gRPC, 2 workers and 2 gRPC processes polling every second."""
    with front_door(repository, workers=2, SERVING_POLL_INTERVAL=str(INTERVAL)) as server, \
            Load(server.url, threads=3) as rest_load, GrpcLoad(server.grpc) as grpc_load:
        probes = [lambda: rest_version(server.url), lambda: grpc_version(server.grpc)]
        assert converge(probes, "1") < 0.01  # the first round
        timings = {}

        write_version(repository, "demand", 2)  # renamed into place: the roll-out
        timings["roll-out"] = converge(probes, "2")

        write_policy(repository, "demand", '{"specific": [1]}')  # the policy pins version 1
        timings["pinned by the policy"] = converge(probes, "1")
        [unloaded] = [row for row in repository_index(server.url) if row["version"] == "2"]
        assert unloaded["state"] == "UNAVAILABLE" and unloaded["reason"].startswith("unloaded: ")

        (repository / "demand" / "version_policy.json").unlink()
        timings["policy removed"] = converge(probes, "2")

        shutil.rmtree(repository / "demand" / "2")  # removed file by file: the roll-back
        timings["roll-back"] = converge(probes, "1")
        assert [row["version"] for row in repository_index(server.url)] == ["1"]
    print(f"\nroll-out and roll-back under load: {rest_load.ok} REST and {grpc_load.ok} gRPC answers, "
          f"{len(rest_load.failures)} and {len(grpc_load.failures)} failed; served everywhere after "
          + ", ".join(f"{what} {seconds:.2f} s" for what, seconds in timings.items()))
    assert rest_load.failures == [] and grpc_load.failures == []
    assert rest_load.versions == {"1", "2"} and rest_load.ok > 100 and grpc_load.ok > 100
    assert all(seconds <= 2 * INTERVAL for seconds in timings.values()), timings


def test_a_copy_whose_files_arrive_one_by_one_is_served_once_complete(repository):
    with gunicorn(repository, workers=2, SERVING_POLL_INTERVAL=str(INTERVAL)) as server, \
            Load(server.url, threads=3) as load:
        wait_for(lambda: load.ok > 50)
        source, folder = MODELS / "demand" / "1", repository / "demand" / "2"
        folder.mkdir()
        card = json.loads((source / "card.json").read_text())
        (folder / "card.json").write_text(json.dumps({**card, "version": 2}))
        graph = (source / "model.onnx").read_bytes()
        with (folder / "model.onnx").open("wb") as partial:
            partial.write(graph[: len(graph) // 2])
            partial.flush()
            time.sleep(2.5 * INTERVAL)  # every worker polls the half-written folder
            partial.write(graph[len(graph) // 2:])
        time.sleep(2.5 * INTERVAL)  # and then the one without its weights
        shutil.copy(source / "weights.npz", folder)
        copied = converge([lambda: rest_version(server.url)], "2")
        status, ready = health(server.url)
        log = server.log_text()
    print(f"\nversion copied in file by file under load: {load.ok} answered, {len(load.failures)} failed, "
          f"served everywhere {copied:.2f} s after its last file")
    assert load.failures == [] and load.versions == {"1", "2"}
    assert "model.onnx does not match the sha256" in log and "weights.npz is missing" in log
    assert copied <= 2 * INTERVAL
    assert status == 200 and "refused_versions" not in ready


def test_a_broken_version_copied_in_is_refused_reported_once_and_never_served(repository):
    with gunicorn(repository, workers=2, SERVING_POLL_INTERVAL=str(INTERVAL)) as server, \
            Load(server.url, threads=3) as load:
        wait_for(lambda: load.ok > 50)
        write_version(repository, "demand", 2, damage=lambda folder: truncate(folder / "model.onnx"))

        def refused_everywhere() -> bool:
            return all(any("demand version 2" in refused for refused in health(server.url)[1].get(
                "refused_versions", [])) for _ in range(12))

        wait_for(refused_everywhere, seconds=2 * INTERVAL)
        time.sleep(4 * INTERVAL)  # several more polls of the unchanged folder
        status, ready = health(server.url)
        [row] = [row for row in repository_index(server.url) if row["version"] == "2"]
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
            exposition = response.read().decode()
    assert load.failures == [] and load.versions == {"1"}
    assert status == 200 and ready["ready"] is True
    assert row["state"] == "UNAVAILABLE" and "sha256" in row["reason"]
    # Refused once by each of the 2 workers, not once per poll.
    assert metric_value(exposition, "serving_model_load_failures_total", model="demand", version="2") == 2
    assert metric_value(exposition, "serving_model_ready", model="demand", version="2") == 0
    assert metric_value(exposition, "serving_model_ready", model="demand", version="1") == 1

