"""Which versions of a model are served: the version policies of Triton and TF Serving.

A policy is one JSON object, in `<repository>/<name>/version_policy.json` for one model or in
SERVING_VERSION_POLICY for every model without that file:

    {"all": true}         every version (the default: what the repository holds is served)
    {"latest": 2}         the 2 highest versions that load: a broken version is refused and
                          reported, and the next lower one serves in its place
    {"specific": [1, 3]}  versions 1 and 3
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import orjson

FORMS = '{"all": true}, {"latest": N} or {"specific": [versions]}'


@dataclass(frozen=True)
class VersionPolicy:
    latest: int | None = None  # serve this many versions, the highest that load
    specific: frozenset[int] | None = None  # serve these versions
    # neither: every version

    @classmethod
    def parse(cls, document) -> VersionPolicy:
        """A policy from its JSON text (str or bytes) or the decoded object; ValueError says
        what is wrong, in one line."""
        if isinstance(document, VersionPolicy):
            return document
        if isinstance(document, str | bytes):
            try:
                document = orjson.loads(document)
            except orjson.JSONDecodeError as error:
                raise ValueError(f"is not valid JSON ({error})") from None
        if isinstance(document, dict) and len(document) == 1:
            [(kind, value)] = document.items()
            if kind == "all" and value is True:
                return cls()
            if kind == "latest" and _positive(value):
                return cls(latest=value)
            if kind == "specific" and isinstance(value, list) and value and all(map(_positive, value)):
                return cls(specific=frozenset(value))
        raise ValueError(f"must be {FORMS}, not {_shown(document)}")

    def admits(self, version: int, served: int) -> bool:
        """Whether to serve `version`, when `served` higher versions already serve."""
        if self.latest is not None:
            return served < self.latest
        return self.specific is None or version in self.specific

    def __str__(self) -> str:
        if self.latest is not None:
            return json.dumps({"latest": self.latest})
        if self.specific is not None:
            return json.dumps({"specific": sorted(self.specific)})
        return json.dumps({"all": True})


ALL = VersionPolicy()


def _positive(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _shown(document) -> str:
    """A short rendering of what was given instead of a policy."""
    try:
        text = orjson.dumps(document).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes
        text = f"a {type(document).__name__} nested too deeply"
    return text if len(text) <= 80 else text[:77] + "..."
