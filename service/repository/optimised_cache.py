"""Optimised models, built once per machine outside the repository and shared by every process.

Every serving process (each gunicorn worker, each gRPC process) loads every model. Loaded from
bytes, onnxruntime keeps a private copy of the weights and re-lays them (ORT_ENABLE_ALL) into more
private memory: ~260 MB per process for a 94 MB ResNet50. Instead, the first process to load a
version optimises it once at ORT_ENABLE_ALL and saves the result (`optimized_model_filepath`) with
its initializers in a file of their own; then every process loads that model by path with
optimisation disabled, and onnxruntime memory-maps the initializers file: one copy of the
weights in the page cache, shared by all, at the speed of the ALL-optimised session.

- Key: the source model.onnx's sha256 (already checked against card.json), the CPU type (machine,
  plus a hash of /proc/cpuinfo's model name and flags), the onnxruntime version and the
  optimisation level: the optimised file is specific to all four. An entry is the folder
  <cache>/<key>/ with model.onnx, weights.bin and manifest.json (the key's parts, the source's
  sha256 and each derived file's sha256).
- Built into a temporary folder in the cache and renamed into place, under an flock on
  <cache>/<key>.lock: of processes starting together one builds and the others wait, then load.
  An entry is never rewritten: a bad one is renamed away (a mapped file stays valid for the
  sessions that map it) and a new one is built.
- Verified before every use: the manifest must name this key and source, each file must be a
  regular file whose sha256 is the manifest's. Each file is stat'ed again after the session is
  created; a file changed meanwhile (another inode, size or mtime) discards the session and the
  entry. What is left, honestly: onnxruntime maps the file after it is hashed, so a process of
  the same user (the folder is 0700) that rewrites the file in place keeping its size and mtime
  could slip other weights in. Anyone who can do that can also write the repository.
- A cache that cannot be used (not writable, full, owned by another user, a model onnxruntime
  cannot save optimised) is reported in one log line per process and reason, and the version is
  loaded as before, privately from the verified bytes: never an outage.
- Old entries: when a process opens the cache, entries unused (by the folder's mtime, touched
  on every load) for OLD_DAYS days are removed, and leftovers of interrupted builds.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import platform
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime
import orjson
from onnxruntime import InferenceSession

from service.repository import sessions

log = logging.getLogger(__name__)

FORMAT = 1  # of an entry; a change makes new keys
MODEL, WEIGHTS, MANIFEST = "model.onnx", "weights.bin", "manifest.json"
MANIFEST_LIMIT = 64 << 10
OLD_DAYS = 7
LEFTOVER_SECONDS = 3600  # a .build- or .old- folder older than this is an interrupted build's
OFF = "off"
PROVIDERS = ["CPUExecutionProvider"]
AUTO = "auto"


class CacheUnusable(Exception):
    """The cache cannot serve this version: the message says why, in one line."""


class BuildFailed(Exception):
    """onnxruntime could not optimise or save the model (load_version then loads it privately:
    a broken model is refused with onnxruntime's own words, a model that only cannot be saved
    optimised is served privately and reported)."""


class BuilderCrashed(Exception):
    """onnxruntime died optimising the model (a signal): load_version refuses the version rather
    than load it in a serving process, which it would kill the same way."""


# The build, in a child interpreter (no import of this project, so its options are its own, and
# it has no memory budget: it serves no request): argv = the optimised model's path
# and its initializers file's name; the model's bytes on stdin.
BUILDER = """
import sys
import onnxruntime
options = onnxruntime.SessionOptions()
options.log_severity_level = 3
options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
options.optimized_model_filepath = sys.argv[1]
external = "session.optimized_model_external_initializers_"  # onnxruntime's session config keys
options.add_session_config_entry(external + "file_name", sys.argv[2])
options.add_session_config_entry(external + "min_size_in_bytes", "1024")
onnxruntime.InferenceSession(sys.stdin.buffer.read(), options, providers=["CPUExecutionProvider"])
"""
BUILD_SECONDS = 600


@functools.cache
def cpu_type() -> str:
    """The machine and a short hash of the CPU's model name and flags (what NCHWc and the
    kernels chosen at optimisation depend on)."""
    wanted = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key = line.split(":", 1)[0].strip()
            if key in ("model name", "flags", "Features", "CPU part") and line not in wanted:
                wanted.append(line)
    return f"{platform.machine()}-{hashlib.sha256(chr(10).join(wanted).encode()).hexdigest()[:12]}"


def default_folder() -> Path:
    """`auto`: the user's cache folder ($XDG_CACHE_HOME, else ~/.cache)/onnx-serving/models."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnx-serving" / "models"


def from_setting(value: str, repository: Path | None = None) -> ModelCache | None:
    """SERVING_MODEL_CACHE: `off` (None: private loads), `auto`, or a folder."""
    if value.strip().lower() == OFF:
        return None
    folder = default_folder() if value.strip().lower() in (AUTO, "") else Path(value)
    return ModelCache(folder, repository)


def _sha256(path: Path) -> tuple[str, os.stat_result]:
    """A regular file's sha256 and its stat, never through a symbolic link."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as file:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise CacheUnusable(f"{path.name} is not a regular file")
        return hashlib.file_digest(file, "sha256").hexdigest(), info


def _same(info: os.stat_result, now: os.stat_result) -> bool:
    return (info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns) == \
        (now.st_ino, now.st_dev, now.st_size, now.st_mtime_ns)


class ModelCache:
    """The folder of optimised models; `session` is what load_version calls."""

    def __init__(self, folder: Path, repository: Path | None = None):
        self.folder = Path(folder)
        self.repository = repository  # the cache must lie outside it
        self.reported: set[str] = set()  # reasons already logged by this process
        self.checked = False

    def __repr__(self) -> str:
        return f"ModelCache({str(self.folder)!r})"

    def key(self, digest: str) -> dict:
        return {"format": FORMAT, "source_sha256": digest, "cpu": cpu_type(),
                "onnxruntime": onnxruntime.__version__, "optimisation": "all",
                "providers": PROVIDERS}

    def entry(self, digest: str) -> Path:
        key = orjson.dumps(self.key(digest), option=orjson.OPT_SORT_KEYS)
        return self.folder / hashlib.sha256(key).hexdigest()[:40]

    def report(self, why: str) -> None:
        """One log line per process and reason: the version then loads privately."""
        if why not in self.reported:
            self.reported.add(why)
            log.warning("model cache %s not used, models load privately in this process "
                        "(more memory): %s", self.folder, why)

    def open(self) -> None:
        """The folder, made 0700 if missing and checked: ours, a real folder, no one else's to
        write. Old entries removed, once per process."""
        repository = Path(self.repository).resolve() if self.repository is not None else None
        if repository is not None and self.folder.resolve().is_relative_to(repository):
            raise CacheUnusable("it lies inside the model repository, which holds sources only")
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.lstat(self.folder)
        except OSError as error:
            raise CacheUnusable(f"the folder cannot be made ({error.strerror or error})") from None
        if not stat.S_ISDIR(info.st_mode):
            raise CacheUnusable("it is not a folder (a symbolic link is not taken)")
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise CacheUnusable("it must belong to this user and be writable by no one else")
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise CacheUnusable("it is not writable")
        if not self.checked:
            self.checked = True
            self.prune()

    def session(self, source: bytes, digest: str, threads: tuple[int, int]) -> InferenceSession:
        """The version's session, loaded from its verified entry (built first when missing or
        bad). CacheUnusable when the cache cannot serve it; onnxruntime's own error for a model
        it cannot optimise (load_version then loads privately, and reports either)."""
        self.open()
        entry = self.entry(digest)
        loaded = self._load(entry, digest, threads)
        if loaded is not None:
            return loaded
        try:
            lock = os.open(f"{entry}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise CacheUnusable(f"no lock file ({error.strerror or error})") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait
            loaded = self._load(entry, digest, threads)
            if loaded is None:
                self._build(entry, source, digest)
        finally:
            os.close(lock)  # releases the lock
        loaded = self._load(entry, digest, threads)
        if loaded is None:
            raise CacheUnusable("an entry just built does not verify")
        return loaded

    def _load(self, entry: Path, digest: str, threads: tuple[int, int]) -> InferenceSession | None:
        """The entry's session if it verifies; None when it is missing or bad (then renamed away
        under the lock by _build)."""
        seen = self.verify(entry, digest)
        if seen is None:
            return None
        options = sessions.session_options(threads, onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL)
        session = InferenceSession(str(entry / MODEL), options, providers=PROVIDERS)
        for path, info in seen.items():  # what was hashed must be what onnxruntime opened
            try:
                now = os.lstat(path)
            except OSError:
                return None
            if not _same(info, now):
                return None
        with contextlib.suppress(OSError):
            os.utime(entry)  # in use: not pruned
        return session

    def verify(self, entry: Path, digest: str) -> dict[Path, os.stat_result] | None:
        """Each derived file's stat when the entry holds exactly what its manifest names, for
        this key; None otherwise."""
        try:
            if not stat.S_ISDIR(os.lstat(entry).st_mode):
                return None
            manifest_path = entry / MANIFEST
            if os.lstat(manifest_path).st_size > MANIFEST_LIMIT:
                return None
            manifest = orjson.loads(manifest_path.read_bytes())
            if manifest.get("key") != self.key(digest) or not isinstance(manifest.get("files"), dict):
                return None
            if set(os.listdir(entry)) != {MANIFEST, *manifest["files"]}:
                return None
            seen = {}
            for name, expected in manifest["files"].items():
                actual, info = _sha256(entry / name)
                if actual != expected:
                    return None
                seen[entry / name] = info
            return seen
        except (OSError, ValueError, CacheUnusable, AttributeError):
            return None

    def _build(self, entry: Path, source: bytes, digest: str) -> None:
        """Optimise the source at ALL into a new folder, then rename it into place. Called under
        the entry's lock."""
        try:
            building = Path(tempfile.mkdtemp(prefix=f".build-{entry.name}-", dir=self.folder))
        except OSError as error:
            raise CacheUnusable(f"cannot write in it ({error.strerror or error})") from None
        try:
            # In a child process: the optimising session's memory (about three times the weights)
            # would otherwise stay with this process after the session is gone (measured: 160 MB
            # for ResNet50). The child optimises the verified bytes it is given on stdin.
            built = subprocess.run([sys.executable, "-c", BUILDER, str(building / MODEL), WEIGHTS],
                                   input=source, capture_output=True, timeout=BUILD_SECONDS)
            if built.returncode < 0:
                name = signal.strsignal(-built.returncode) or f"signal {-built.returncode}"
                raise BuilderCrashed(f"onnxruntime crashed optimising model.onnx ({name}): not loaded, "
                                     "so that it cannot take a serving process down")
            if built.returncode != 0:
                lines = built.stderr.decode(errors="replace").strip().splitlines()
                lines = lines or [f"exit code {built.returncode}"]
                raise BuildFailed(f"optimising failed: {lines[-1][:300]}")
            files = {}
            for name in sorted(os.listdir(building)):
                files[name], _ = _sha256(building / name)
                with open(building / name, "rb") as file:
                    os.fsync(file.fileno())
            if MODEL not in files:
                raise CacheUnusable("onnxruntime wrote no optimised model")
            (building / MANIFEST).write_bytes(orjson.dumps({"key": self.key(digest), "files": files,
                                                            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                                                           option=orjson.OPT_INDENT_2))
            os.chmod(building, 0o700)
            if os.path.lexists(entry):  # bad: away, never rewritten (sessions may map its files)
                os.rename(entry, self.folder / f".old-{entry.name}-{os.getpid()}-{time.monotonic_ns()}")
            os.rename(building, entry)
        except subprocess.TimeoutExpired:
            raise BuildFailed(f"optimising took more than {BUILD_SECONDS} s") from None
        except OSError as error:
            raise CacheUnusable(f"cannot write in it ({error.strerror or error})") from None
        finally:
            shutil.rmtree(building, ignore_errors=True)

    def prune(self) -> None:
        """Entries unused for OLD_DAYS days, and leftovers of interrupted builds, removed. An
        entry whose lock another process holds (building or waiting) is left."""
        now = time.time()
        with contextlib.suppress(OSError), os.scandir(self.folder) as entries:
            for item in list(entries):
                with contextlib.suppress(OSError):
                    age = now - item.stat(follow_symlinks=False).st_mtime
                    if item.name.startswith((".build-", ".old-")):
                        if age > LEFTOVER_SECONDS or item.name.startswith(".old-"):
                            shutil.rmtree(item.path, ignore_errors=True)
                    elif item.is_dir(follow_symlinks=False) and age > OLD_DAYS * 86400:
                        self._remove(Path(item.path))

    def _remove(self, entry: Path) -> None:
        lock = os.open(f"{entry}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)
            return
        try:
            away = self.folder / f".old-{entry.name}-{os.getpid()}-{time.monotonic_ns()}"
            os.rename(entry, away)
            shutil.rmtree(away, ignore_errors=True)
            os.unlink(f"{entry}.lock")
        finally:
            os.close(lock)
