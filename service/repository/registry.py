"""The model repository, loaded: one onnxruntime session per model version per worker.

Layout: <repository>/<name>/<version>/{model.onnx, card.json, and weights.npz when the card has
a forward section}, and optionally <repository>/<name>/version_policy.json; versions are positive
integers and the highest loaded one is the default. A version that fails to load (bad card, sha256
mismatch, unreadable graph, a signature that differs from the card's, ...) is recorded with its
reason and not served; the others are unaffected. The version policy (service/repository/version_policy.py)
decides which versions are loaded; `refresh` re-reads the repository (service/repository/polling.py calls it).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from modelcard.card import one_line
from service.core.errors import ModelNotFound, ModelNotReady
from service.repository import untrusted_files
from service.repository.optimised_cache import ModelCache
from service.repository.scan import Listing, is_version, scan
from service.repository.untrusted_files import UnsafeFile
from service.repository.version_folder import LoadedModel, LoadError, fingerprint, load_version
from service.repository.version_policy import ALL, VersionPolicy

log = logging.getLogger(__name__)

POLICY_LIMIT = 64 << 10


POLICY_FILE = "version_policy.json"  # in a model's folder: which of its versions to serve
# What a served version whose folder changed and was refused says, before why.
STALE = "its files changed and were refused, the copy loaded before serves: "


@dataclass(frozen=True)
class Change:
    """One thing a refresh did, for the log and the metrics."""

    name: str
    version: int | str | None  # None: the model's version policy, or its folder (misnamed)
    event: str  # loaded, reloaded, refused, kept, unloaded, policy, bad policy, misnamed
    reason: str = ""

    @property
    def message(self) -> str:
        if self.event == "misnamed":
            where = (f"folder {self.name!r}" if self.version is None
                     else f"model {self.name} folder {self.version!r}")
            return f"{where} of the model repository is not served: {self.reason}"
        subject = f"model {self.name}" + ("" if self.version is None else f" version {self.version}")
        return subject + {
            "loaded": " loaded",
            "reloaded": " loaded again: its folder changed",
            "refused": f" not loaded: {self.reason}",
            "kept": f" changed but did not load, the loaded copy keeps serving: {self.reason}",
            "unloaded": f" unloaded: {self.reason}",
            "policy": f": version policy {self.reason}",
            "bad policy": f": {self.reason}",
        }[self.event]

    @property
    def level(self) -> int:
        return {"refused": logging.ERROR, "bad policy": logging.ERROR, "misnamed": logging.ERROR,
                "kept": logging.WARNING}.get(self.event, logging.INFO)


@dataclass(frozen=True)
class Snapshot:
    """What the registry serves. A refresh builds a new one and replaces the old in one
    assignment: a request reads one snapshot, never a half-updated one. Never mutated."""

    models: dict[str, dict[int, LoadedModel]] = field(default_factory=dict)
    failures: dict[str, dict[int, str]] = field(default_factory=dict)  # refused versions: why
    unloaded: dict[str, dict[int, str]] = field(default_factory=dict)  # left out by the policy: why
    problems: dict[str, str] = field(default_factory=dict)  # per model: a bad policy file, or none served
    repository_error: str | None = None
    stale: dict[str, dict[int, str]] = field(default_factory=dict)  # served, but its files changed: why
    misnamed: dict[tuple[str, str | None], str] = field(default_factory=dict)  # folders not served: why

    @property
    def names(self) -> set[str]:
        return {*self.models, *self.failures, *self.unloaded, *self.problems}


class ModelRegistry:
    """The served versions of every model in the repository, re-read by `refresh`.

    A refresh loads only new and changed version folders (by their fingerprint), off the request
    path, then swaps the snapshot; a request keeps the LoadedModel it holds until it is done. A
    version that failed to load is tried again only when its folder changes, so a copy still
    arriving ends up served, and an unchanged broken folder is reported once, not every poll. A
    changed folder of a loaded version that does not load leaves the loaded copy serving (as
    Triton's reload does), reported as stale. Folders whose names are no model or version are
    listed with the reason, never loaded. Nothing in the repository makes a refresh raise.
    """

    def __init__(self, repository: Path, threads: tuple[int, int] = (1, 1),
                 policy: VersionPolicy = ALL, cache: ModelCache | None = None):
        self.repository = Path(repository)
        self.cache = cache  # optimised models shared by every process; None: private loads
        self.threads = threads
        self.policy = policy  # for models without a version_policy.json
        self.state = Snapshot()
        self._refreshing = threading.Lock()
        self._tried: dict[tuple[str, int], tuple] = {}  # fingerprint at the last load or try
        self._policies: dict[str, tuple] = {}  # name: (file's stat, policy, problem)
        self._listed = False  # once the repository was listed, failing to list it keeps the state
        self._scan_error: str | None = None

    @property
    def models(self) -> dict[str, dict[int, LoadedModel]]:
        return self.state.models

    @property
    def failures(self) -> dict[str, dict[int, str]]:
        return self.state.failures

    @property
    def unloaded(self) -> dict[str, dict[int, str]]:
        return self.state.unloaded

    @property
    def repository_error(self) -> str | None:
        return self.state.repository_error

    def load(self) -> ModelRegistry:
        self.refresh()
        return self

    def refresh(self) -> list[Change]:
        """Read the repository again and serve what it holds now; the changes, each logged. A
        refresh already under way is not waited for (nothing ever waits on file I/O)."""
        if not self._refreshing.acquire(blocking=False):
            return []
        try:
            changes = self._refresh()
        finally:
            self._refreshing.release()
        for change in changes:
            log.log(change.level, "%s", change.message)
        return changes

    def _refresh(self) -> list[Change]:
        old, changes = self.state, []
        try:
            listing = self._scan()
        except OSError as error:
            why = (f"model repository {self.repository} is not a folder"
                   if isinstance(error, (FileNotFoundError, NotADirectoryError))
                   else f"model repository {self.repository} cannot be read ({error.strerror or error})")
            if why != self._scan_error:
                log.error("%s%s", why, "; serving what was loaded" if self._listed else "")
            self._scan_error = why
            if not self._listed:
                self.state = Snapshot(repository_error=why)
            return changes
        self._listed, self._scan_error = True, None
        changes += [Change(*key, "misnamed", why) for key, why in listing.misnamed.items()
                    if old.misnamed.get(key) != why]
        models, failures, unloaded, problems, stale = {}, {}, {}, dict(listing.problems), {}
        for name, versions in sorted(listing.versions.items()):
            served, failed, left_out, problem, kept = self._refresh_model(name, versions, old, changes)
            for table, value in ((models, served), (failures, failed), (unloaded, left_out),
                                 (problems, problem), (stale, kept)):
                if value:
                    table[name] = value
        for name in sorted(set(old.models) - set(models) - set(listing.versions)):
            changes += [Change(name, version, "unloaded", "its model folder was removed")
                        for version in sorted(old.models[name])]
        # What is neither served nor refused is tried afresh when it comes back.
        self._tried = {key: seen for key, seen in self._tried.items()
                       if key[1] in models.get(key[0], {}) or key[1] in failures.get(key[0], {})}
        self._policies = {name: entry for name, entry in self._policies.items() if name in listing.versions}
        error = None
        if not (models or failures or problems):
            error = f"model repository {self.repository} holds no models"
            if error != old.repository_error:
                log.error(error)
        self.state = Snapshot(models, failures, unloaded, problems, error, stale, listing.misnamed)
        return changes

    def _scan(self) -> Listing:
        return scan(self.repository)

    def _refresh_model(self, name: str, versions: dict[int, Path], old: Snapshot, changes: list):
        policy, problem = self._policy(name, changes)
        served, failed, left_out, stale = {}, {}, {}, {}
        for version in sorted(versions, reverse=True):
            if policy.admits(version, len(served)):
                self._try(name, version, versions[version], old, (served, failed, stale), changes)
            else:
                left_out[version] = f"the version policy {policy} leaves it out"
        changes += [Change(name, version, "unloaded", left_out.get(version, "its folder was removed"))
                    for version in sorted(old.models.get(name, {})) if version not in served]
        if versions and not served and not failed:
            problem = "; ".join(filter(None, [problem, f"the version policy {policy} selects none of "
                                              f"its versions ({', '.join(map(str, sorted(versions)))})"]))
        return served, failed, left_out, problem, stale

    def _try(self, name: str, version: int, path: Path, old: Snapshot, tables: tuple[dict, dict, dict],
             changes: list) -> None:
        """Serve the version loaded before if its folder is unchanged, else load it."""
        served, failed, stale = tables
        key, seen = (name, version), fingerprint(path)
        loaded = old.models.get(name, {}).get(version)
        if seen is None:  # removed since the listing
            return
        if key in self._tried and self._tried[key] == seen:
            if loaded is not None:
                served[version] = loaded
                if version in old.stale.get(name, {}):
                    stale[version] = old.stale[name][version]
                return
            if version in old.failures.get(name, {}):
                failed[version] = old.failures[name][version]
                return
        self._tried[key] = seen
        try:
            served[version] = load_version(path, name, version, self.threads, self.cache)
        except LoadError as error:
            why = one_line(str(error))
            if loaded is None:
                failed[version] = why
                changes.append(Change(name, version, "refused", why))
            else:
                served[version], stale[version] = loaded, why
                changes.append(Change(name, version, "kept", why))
            return
        changes.append(Change(name, version, "loaded" if loaded is None else "reloaded"))

    def _policy(self, name: str, changes: list) -> tuple[VersionPolicy, str | None]:
        """The model's version_policy.json, read again when it changes; the default without one. A
        bad file is reported and the policy in force stays (the default, at start)."""
        path = self.repository / name / POLICY_FILE
        try:
            info = os.lstat(path)
            seen = (info.st_mode, info.st_size, info.st_mtime_ns, info.st_ino)
        except FileNotFoundError:
            seen = None
        except OSError as error:
            seen = ("unreadable", str(error))
        cached = self._policies.get(name)
        if cached is not None and cached[0] == seen:
            return cached[1], cached[2]
        before = cached[1] if cached else self.policy
        policy, problem = self.policy, None
        if seen is not None:
            try:
                policy = VersionPolicy.parse(untrusted_files.read(path, POLICY_LIMIT))
            except UnsafeFile as error:
                policy, problem = before, str(error)
            except ValueError as error:
                policy, problem = before, one_line(f"{POLICY_FILE} {error}")
        if problem:
            changes.append(Change(name, None, "bad policy", f"{problem}; the policy stays {policy}"))
        elif policy != before or (cached is None and seen is not None):
            changes.append(Change(name, None, "policy", f"{policy}"
                                  + (f" ({POLICY_FILE})" if seen is not None else " (the default)")))
        self._policies[name] = (seen, policy, problem)
        return policy, problem

    @property
    def ready(self) -> bool:
        """The readiness rule: the repository holds at least one model, and every model in it
        has a version to serve (its highest loaded one). A broken version beside a healthy
        older one is refused and reported, but does not make the server unready: the older
        version keeps serving, as after a failed roll-out of a new version."""
        state = self.state
        return (state.repository_error is None and bool(state.models)
                and all(name in state.models for name in (*state.failures, *state.problems)))

    def unservable(self) -> list[str]:
        """What is wrong with the models that have no version to serve."""
        return self._reasons(served=False)

    def refused(self) -> list[str]:
        """Broken versions (and a bad version_policy.json) of models that still serve a version."""
        return self._reasons(served=True)

    def _reasons(self, served: bool) -> list[str]:
        state = self.state
        reasons = [f"{name}: {why}" for name, why in sorted(state.problems.items())
                   if (name in state.models) == served]
        return reasons + [f"{name} version {version}: {why}"
                          for name, versions in sorted(state.failures.items())
                          if (name in state.models) == served
                          for version, why in sorted(versions.items())]

    def names(self) -> list[str]:
        return sorted(self.state.names)

    def get(self, name: str, version: str | int | None = None) -> LoadedModel:
        """The requested version, or the highest loaded one; 404 or 503 otherwise."""
        state = self.state
        loaded, failed = state.models.get(name, {}), state.failures.get(name, {})
        if version is None:
            if loaded:
                return loaded[max(loaded)]
            reasons = [f"version {v}: {why}" for v, why in sorted(failed.items())]
            reasons += [state.problems[name]] if name in state.problems else []
            if reasons:
                raise ModelNotReady(f"model {name!r} is not ready: no version loaded "
                                    f"({'; '.join(reasons)})")
            raise ModelNotFound(name)
        number = self.version_number(name, version)
        if number in loaded:
            return loaded[number]
        if number in failed:
            raise ModelNotReady(f"model {name!r} version {number} is not ready: {failed[number]}")
        raise ModelNotFound(name, number)

    def status(self, name: str) -> dict[int, str | None]:
        """Each loaded or refused version of a model: None when loaded, else why not. 404 for a
        name the repository does not hold."""
        state = self.state
        if name not in state.names:
            raise ModelNotFound(name)
        versions = {v: None for v in state.models.get(name, {})}
        versions.update(state.failures.get(name, {}))
        return dict(sorted(versions.items()))

    def stale(self, model: LoadedModel) -> str | None:
        """Why a served version's folder no longer holds what is served, or None."""
        why = self.state.stale.get(model.name, {}).get(model.version)
        return None if why is None else STALE + why

    def index(self) -> list[tuple[str, str, bool, str]]:
        """Every folder of the repository as (model, version, ready, reason), from one snapshot: a
        served version is ready (with a reason when its files changed and were refused); a
        refused one says why; one the policy leaves out, "unloaded: ..."; folders that name no
        model or version, why (the version "" for a model folder)."""
        state = self.state
        entries = []
        for name in sorted(state.names):
            versions = {v: (True, "") for v in state.models.get(name, {})}
            versions.update({v: (True, STALE + why) for v, why in state.stale.get(name, {}).items()})
            versions.update({v: (False, why) for v, why in state.failures.get(name, {}).items()})
            versions.update({v: (False, f"unloaded: {why}")
                             for v, why in state.unloaded.get(name, {}).items()})
            entries += [(name, str(v), ready, why) for v, (ready, why) in sorted(versions.items())]
        entries += [(name, version or "", False, why)
                    for (name, version), why in sorted(state.misnamed.items(), key=lambda item: str(item[0]))]
        return entries

    @staticmethod
    def version_number(name: str, version: str | int) -> int:
        """A version from a URL: a positive integer, or 404 (never a path, never a negative)."""
        text = str(version)
        if not is_version(text):
            raise ModelNotFound(name, text)
        return int(text)
