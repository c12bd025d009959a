"""Settings: defaults, then SERVING_* environment variables, then the mapping given to create_app.

One place for every process: the app, gunicorn's config (service/gunicorn.conf.py) and the
front door (service/__main__.py, which starts nginx and gunicorn) all read `Settings.load()`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from service.version_policy import ALL, VersionPolicy

PREFIX = "SERVING_"
DEFAULT_REPOSITORY = Path(__file__).resolve().parent.parent / "models"
# The allowed values of the settings that are words; other text settings are checked by pattern.
CHOICES = {
    "log_level": ("debug", "info", "warning", "error", "critical"),
    "worker_class": ("sync", "gthread"),
    "front_door": ("nginx", "none"),
}
PATTERNS = {
    "bind": (re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}"), "HOST:PORT"),
    "grpc_bind": (re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}"), "HOST:PORT"),
    "nginx": (re.compile(r"[^\s;{}]+"), "a path or command name"),
    # A browser's Origin: scheme://host[:port], lowercase, no path; or * for any.
    "cors_origins": (re.compile(r"\*|https?://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?"),
                     "exact origins such as https://app.example.com, or *"),
}
BOOLEANS = {"true": True, "1": True, "yes": True, "on": True,
            "false": False, "0": False, "no": False, "off": False}
# Integer settings that may be 0, which turns the feature off; the others must be positive.
MAY_BE_ZERO = {"poll_interval"}


@dataclass(frozen=True)
class Settings:
    model_repository: Path = DEFAULT_REPOSITORY
    max_body_bytes: int = 16 * 1024 * 1024  # 413 above this
    max_batch: int = 4096  # rows per request; 413 above this
    intra_op_threads: int = 1  # one gunicorn worker per core: onnxruntime needs no more
    inter_op_threads: int = 1
    log_level: str = "info"
    # The processes (see README, Configuration).
    bind: str = "0.0.0.0:8000"  # where clients connect: the front door, or gunicorn without one
    front_door: str = "nginx"  # nginx buffers clients in front of gunicorn; none: gunicorn alone
    nginx: str = "nginx"  # the nginx program
    client_timeout: int = 10  # seconds a client may take to send headers or body, or to read
    keepalive_timeout: int = 75  # seconds an idle kept-alive connection stays open
    workers: int = os.cpu_count() or 1
    threads: int = 1  # above 1, gunicorn's gthread workers
    worker_class: str = "sync"
    timeout: int = 30  # gunicorn kills a worker silent for this long
    graceful_timeout: int = 30  # seconds to finish requests on SIGTERM
    # The Open Inference Protocol over gRPC (service/grpc_server.py): SERVING_WORKERS processes
    # on this address (SO_REUSEPORT). In each, grpc_threads threads take the calls in turn (more
    # only for calls kept waiting by threads held by slow messages); at most grpc_max_calls calls
    # are open (waiting for their message or a thread, running, streaming), of which
    # grpc_max_streams streaming ones; RESOURCE_EXHAUSTED beyond. A call's message (each message
    # of a stream) must arrive within client_timeout.
    grpc_bind: str = "0.0.0.0:8081"
    grpc_threads: int = 4
    grpc_max_calls: int = 256
    grpc_max_streams: int = 16
    # Set by the front door for gunicorn: the folder where nginx leaves large request bodies
    # (see service/nginx.py); a worker reads a body from there only when nginx says so.
    body_files: Path | None = None
    # Access control (service/access.py; README, Access control): off while no key is set.
    api_keys_file: Path | None = None  # one key per line; keys required on the model routes
    api_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False)  # comma-separated; prefer the file
    public_health: bool = True  # probes carry no token: /v2/health/* and gRPC health stay open
    public_metrics: bool = True  # nor do Prometheus scrapes: /metrics stays open
    cors_origins: tuple[str, ...] = ()  # comma-separated origins whose pages may call the API
    # Roll-outs (README, Roll-outs): every process re-reads the repository this often (0: only at
    # start and on SIGHUP), serving the versions the policy selects (service/version_policy.py).
    poll_interval: int = 10  # seconds
    version_policy: VersionPolicy = ALL  # for models without a version_policy.json

    @classmethod
    def load(cls, overrides: Mapping | None = None, environ: Mapping | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        settings = cls()
        for field in fields(cls):
            raw = environ.get(PREFIX + field.name.upper())
            if raw is not None:
                settings = replace(settings, **{field.name: _convert(field.name, raw, field.type)})
        for name, value in (overrides or {}).items():
            if name not in {f.name for f in fields(cls)}:
                raise ValueError(f"unknown setting {name!r}")
            settings = replace(settings, **{name: _convert(name, value, cls.__annotations__[name])})
        return settings


def _convert(name: str, value, kind: str):
    if kind == "Path":
        return Path(value)
    if kind == "Path | None":
        return Path(value) if str(value or "").strip() else None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() not in BOOLEANS:
            raise ValueError(f"setting {PREFIX}{name.upper()}={value!r} must be true or false")
        return BOOLEANS[str(value).lower()]
    if kind == "tuple[str, ...]":
        items = value.split(",") if isinstance(value, str) else list(value)
        items = tuple(item.strip() for item in items if item.strip())
        if name == "api_keys":  # checked by service.access, which never echoes a key
            return items
        return tuple(_convert(name, item.lower(), "str") for item in items)
    if kind == "int":
        lowest = 0 if name in MAY_BE_ZERO else 1
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = -1
        if number < lowest:
            raise ValueError(f"setting {PREFIX}{name.upper()}={value!r} must be "
                             + ("0 or a positive integer" if lowest == 0 else "a positive integer"))
        return number
    if kind == "VersionPolicy":
        try:
            return VersionPolicy.parse(value)
        except ValueError as error:
            raise ValueError(f"setting {PREFIX}{name.upper()}={value!r} {error}") from None
    if name in CHOICES:
        word = str(value).lower()
        if word not in CHOICES[name]:
            raise ValueError(f"setting {PREFIX}{name.upper()}={value!r} must be one of "
                             + ", ".join(CHOICES[name]))
        return word
    pattern, expected = PATTERNS[name]
    if not pattern.fullmatch(str(value)):
        raise ValueError(f"setting {PREFIX}{name.upper()}={value!r} must be {expected}")
    return str(value)
