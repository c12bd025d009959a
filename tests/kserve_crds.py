"""Strict validation of KServe resources against KServe's own CRDs (deploy/kserve/crds/).

A CRD's `openAPIV3Schema` is nearly JSON Schema (OpenAPI 3.0's dialect, close to draft 4), and
jsonschema validates it once two Kubernetes rules are written out:

- An object's fields are the `properties` it lists. The API server prunes any other field, and
  refuses it under strict field validation (`kubectl apply --validate=strict`), unless the schema
  says `x-kubernetes-preserve-unknown-fields: true`. JSON Schema allows other fields unless told
  `additionalProperties: false`, which `strict()` adds.
- `x-kubernetes-int-or-string: true` admits an integer or a string (a port number or name, a
  quantity). KServe's CRDs spell that as an `anyOf` as well; `strict()` states it as the type.

`metadata` is ObjectMeta, checked by the API server and left open by every CRD (`type: object`).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from jsonschema import Draft4Validator

CRDS = Path(__file__).resolve().parent.parent / "deploy" / "kserve" / "crds"
PRESERVE_UNKNOWN = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING = "x-kubernetes-int-or-string"
# The InferenceService CRD is 2 MB of YAML: libyaml reads it three times faster, where installed.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def strict(schema: dict) -> dict:
    """A copy of `schema` that refuses unlisted fields and knows int-or-string."""
    result = dict(schema)
    if "properties" in result:
        result["properties"] = {name: strict(sub) for name, sub in result["properties"].items()}
        if "additionalProperties" not in result and not result.get(PRESERVE_UNKNOWN):
            result["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(result.get(key), dict):
            result[key] = strict(result[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in result:
            result[key] = [strict(sub) for sub in result[key]]
    if result.get(INT_OR_STRING):
        result["type"] = ["integer", "string"]
    return result


def load_crds(folder: Path = CRDS) -> dict[tuple[str, str], dict]:
    """Every CRD in `folder`, by (group, kind)."""
    crds = {}
    for path in sorted(folder.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=LOADER)
        assert crd["kind"] == "CustomResourceDefinition", path
        crds[crd["spec"]["group"], crd["spec"]["names"]["kind"]] = crd
    return crds


def openapi_schema(crds: dict, api_version: str, kind: str) -> dict:
    """The served version's openAPIV3Schema for `apiVersion` and `kind`, as the CRD has it."""
    group, _, version = api_version.rpartition("/")
    crd = crds.get((group, kind))
    if crd is None:
        raise LookupError(f"no CRD for {kind} in group {group!r}")
    served = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
    if not served:
        raise LookupError(f"{kind}: the CRD serves no version {version!r}")
    return served[0]["schema"]["openAPIV3Schema"]


def scope(crds: dict, api_version: str, kind: str) -> str:
    """'Namespaced' or 'Cluster'."""
    return crds[api_version.rpartition("/")[0], kind]["spec"]["scope"]


def problems(validator: Draft4Validator, document: dict) -> list[str]:
    """Each error as `path: message`, sorted; empty when the document is valid."""
    return sorted(f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
                  for error in validator.iter_errors(document))


def validator(crds: dict, document: dict, *, strictly: bool = True) -> Draft4Validator:
    schema = openapi_schema(crds, document["apiVersion"], document["kind"])
    return Draft4Validator(strict(schema) if strictly else schema)
