"""Settings: defaults, then SERVING_* environment variables, then the mapping given to create_app.

One place for every process: the app, gunicorn's config (service/process/gunicorn.conf.py), the front
door (service/process/launcher.py, which starts nginx and gunicorn) and the gRPC processes all read
`Settings.load()`. Each setting is declared once, below, with its type, default, rule and one
line of documentation; docs/settings.md is written from these declarations:

    python -m service.settings --markdown > docs/settings.md
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import get_type_hints

from service.repository.version_policy import ALL, VersionPolicy

PREFIX = "SERVING_"
DEFAULT_REPOSITORY = Path(__file__).resolve().parent.parent / "models"
ADDRESS = (re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}"), "HOST:PORT")
# A browser's Origin: scheme://host[:port], lowercase, no path; or * for any.
ORIGIN = re.compile(r"\*|https?://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?")
BOOLEANS = {"true": True, "1": True, "yes": True, "on": True,
            "false": False, "0": False, "no": False, "off": False}


@dataclass(frozen=True)
class Declaration:
    """What a setting is, beyond its type and default: its documentation and its rule."""
    doc: str  # one line, for docs/settings.md
    choices: tuple[str, ...] = ()  # the allowed words, read in lowercase
    pattern: tuple[re.Pattern, str] | None = None  # what a text must match, and that in words
    lower: bool = False  # read in lowercase before the pattern
    may_be_zero: bool = False  # integers: 0 turns the feature off; otherwise positive
    secret: bool = False  # never in the repr nor in an error message
    by_launcher: bool = False  # set by `python -m service` for its children, not by users
    shown: str | None = None  # the default in the table, when its value depends on the machine


def setting(default, doc: str, **rule):
    """A field of Settings: its default, its one line of documentation and its rule."""
    declaration = Declaration(doc, **rule)
    return dataclasses.field(default=default, repr=not declaration.secret,
                             metadata={"declaration": declaration})


@dataclass(frozen=True)
class Settings:
    model_repository: Path = setting(DEFAULT_REPOSITORY, "the repository to load",
                                     shown="the project's `models/`")
    max_body_bytes: int = setting(16 * 1024 * 1024, "bytes: a larger request body gets 413, "
                                  "a larger gRPC message RESOURCE_EXHAUSTED")
    max_batch: int = setting(4096, "rows per request; more get 413")
    intra_op_threads: int = setting(1, "onnxruntime threads per worker within an operator "
                                    "(with one worker per core, onnxruntime needs no more)")
    inter_op_threads: int = setting(1, "onnxruntime threads per worker across operators")
    log_level: str = setting("info", "`debug`, `info`, `warning`, `error` or `critical`",
                             choices=("debug", "info", "warning", "error", "critical"))
    # The processes (README, The front door).
    bind: str = setting("0.0.0.0:8000", "where clients connect: the front door, or gunicorn "
                        "alone with `SERVING_FRONT_DOOR=none`", pattern=ADDRESS)
    front_door: str = setting("nginx", "`nginx` buffers clients in front of gunicorn; `none`: "
                              "gunicorn alone, behind a buffering proxy of your own",
                              choices=("nginx", "none"))
    nginx: str = setting("nginx", "the nginx program",
                         pattern=(re.compile(r"[^\s;{}]+"), "a path or command name"))
    client_timeout: int = setting(10, "seconds: an HTTP client (nginx) must send its headers within "
                                  "this time and make progress with its body and with reading the "
                                  "answer at least this often, and a gRPC client must send each "
                                  "message it owes whole within it (a 16 MB message needs 1.6 MB/s), "
                                  "or it is cut off")
    keepalive_timeout: int = setting(75, "seconds an idle kept-alive connection stays open")
    workers: int = setting(os.cpu_count() or 1, "gunicorn workers, each with its own onnxruntime "
                           "sessions; as many gRPC processes", shown="the CPU count")
    threads: int = setting(1, "threads per gunicorn worker; above 1, gunicorn's gthread workers")
    worker_class: str = setting("sync", "gunicorn's worker class, `sync` or `gthread` (sync "
                                "measured best; see README, Performance)",
                                choices=("sync", "gthread"))
    timeout: int = setting(30, "seconds: gunicorn replaces a worker silent for this long")
    graceful_timeout: int = setting(30, "seconds that requests and gRPC calls in flight get to "
                                    "finish on SIGTERM")
    # The Open Inference Protocol over gRPC (service/grpc/server.py).
    grpc_bind: str = setting("0.0.0.0:8081", "the gRPC address (see README, gRPC), served by "
                             "`SERVING_WORKERS` processes (SO_REUSEPORT)", pattern=ADDRESS)
    grpc_threads: int = setting(4, "threads per gRPC process that take the calls in turn (more only "
                                "for calls kept waiting by threads held by stalled calls: README, "
                                "gRPC)")
    grpc_max_calls: int = setting(256, "per gRPC process, calls open at once (waiting for their "
                                  "message or their turn, running, streaming); RESOURCE_EXHAUSTED "
                                  "beyond")
    grpc_max_streams: int = setting(16, "per gRPC process, streaming calls open at once (health "
                                    "Watch, reflection); RESOURCE_EXHAUSTED beyond")
    # gRPC under overload (docs/grpc.md): a bounded wait for a thread, refused past it.
    grpc_queue_budget_ms: int = setting(1000, "milliseconds a gRPC call may wait for a thread: while "
                                        "the longest waiting has waited longer, calls are refused "
                                        "as they arrive (RESOURCE_EXHAUSTED with a retry hint; "
                                        "health and liveness never wait); 0: off", may_be_zero=True)
    # A worker reads a body from this folder only when nginx says so (service/process/nginx.py).
    body_files: Path | None = setting(None, "the folder where nginx leaves request bodies of a "
                                      "million bytes or more, for gunicorn (see README, The front "
                                      "door)", by_launcher=True)
    # The front door under load (docs/reliability.md)
    queue_budget_ms: int = setting(1000, "milliseconds a request may wait behind the front door for a "
                                   "worker; one that waited longer gets 503 with Retry-After, unread "
                                   "(health routes never); 0: off", may_be_zero=True)
    queue_connections: int = setting(0, "requests the front door hands gunicorn at once, per worker "
                                     "(waiting in its backlog or answered); past them, nginx's own "
                                     "503 with Retry-After; 0: no bound", may_be_zero=True)
    health_files: Path | None = setting(None, "the folder where the workers keep the health answers "
                                        "that nginx gives without waiting for a worker",
                                        by_launcher=True)
    # Access control (service/rest/access.py; README, Access control): off while no key is set.
    api_keys_file: Path | None = setting(None, "a file of API keys, one per line; keys are then "
                                         "required on the model routes")
    # Checked by service.rest.access, which never echoes a key.
    api_keys: tuple[str, ...] = setting((), "API keys, comma-separated, added to the file's; "
                                        "prefer the file", secret=True)
    public_health: bool = setting(True, "probes carry no token: `/v2/health/*` and gRPC health "
                                  "stay open; `false` puts them behind the key")
    public_metrics: bool = setting(True, "nor do Prometheus scrapes: `/metrics` stays open; "
                                   "`false` puts it behind the key")
    cors_origins: tuple[str, ...] = setting(
        (), "origins whose pages may call the API from a browser, comma-separated and exact "
        "(`https://app.example.com`: scheme, host, port, no path), or `*` for any",
        pattern=(ORIGIN, "exact origins such as https://app.example.com, or *"), lower=True)
    # Roll-outs (README, Roll-outs; service/repository/version_policy.py).
    poll_interval: int = setting(10, "seconds between two reads of the repository by each "
                                 "process; 0: only at start and on SIGHUP", may_be_zero=True)
    version_policy: VersionPolicy = setting(ALL, "which versions of a model without a "
                                            "`version_policy.json` are served")
    # Limits on every run of a model (docs/reliability.md, Limits; service/core/limits.py).
    run_timeout_ms: int = setting(10_000, "milliseconds a run of a model may take when its card "
                                  "gives no `limits.timeout_ms`; a run past its limit, or past the "
                                  "client's deadline, is stopped (REST 504, gRPC DEADLINE_EXCEEDED); "
                                  "0: no limit", may_be_zero=True)
    max_run_timeout_ms: int = setting(20_000, "milliseconds: the most a card's `limits.timeout_ms` "
                                      "gets; below `SERVING_TIMEOUT`, when gunicorn would kill the "
                                      "worker")
    model_long_runs: str = setting("auto", "per model, in the whole service, runs lasting over "
                                   "0.1 s at once (a card's `limits.long_runs` overrides it); the "
                                   "model's other requests get 503 with Retry-After: `auto` is "
                                   "`SERVING_WORKERS` - 1 (at least 1), `off` no bound",
                                   pattern=(re.compile(r"auto|off|[1-9][0-9]{0,4}"),
                                            "auto, off or a positive integer"), lower=True)
    run_slots: Path | None = setting(None, "the folder where the serving processes share their "
                                     "models' long runs (see docs/reliability.md, Limits); unset, "
                                     "each process bounds its own", by_launcher=True)
    # Models in memory (docs/memory.md; service/repository/optimised_cache.py).
    model_cache: str = setting("auto", "where each loaded version is kept optimised, built once and "
                               "memory-mapped by every process (one copy of the weights per machine): "
                               "`auto` is `$XDG_CACHE_HOME/onnx-serving/models` (else "
                               "`~/.cache/onnx-serving/models`), or a folder outside the repository "
                               "(made 0700); `off`: each process loads its own private copy")
    # A memory budget for every run (docs/memory.md)
    run_memory_mb: str = setting("auto", "MB of onnxruntime's memory that the runs of one serving "
                                 "process may hold at once (a cap on its arena, given back after "
                                 "each run); a run that needs more gets 413 / RESOURCE_EXHAUSTED at "
                                 "once; `auto`: half the machine's memory (the cgroup limit, else "
                                 "MemTotal) over 2 x `SERVING_WORKERS` processes; `0`: no budget",
                                 pattern=(re.compile(r"auto|[0-9]+"), "`auto` or a number of MB (0: off)"),
                                 lower=True)

    def __post_init__(self):
        if self.max_run_timeout_ms >= self.timeout * 1000:
            raise ValueError(f"setting SERVING_MAX_RUN_TIMEOUT_MS={self.max_run_timeout_ms} must be "
                             f"below SERVING_TIMEOUT ({self.timeout} s), when gunicorn kills a worker")
        if self.run_timeout_ms > self.max_run_timeout_ms:
            raise ValueError(f"setting SERVING_RUN_TIMEOUT_MS={self.run_timeout_ms} must not be above "
                             f"SERVING_MAX_RUN_TIMEOUT_MS={self.max_run_timeout_ms}")

    @classmethod
    def load(cls, overrides: Mapping | None = None, environ: Mapping | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        declared = {field.name: field for field in fields(cls)}
        values = {}
        for name, field in declared.items():
            raw = environ.get(variable(field))
            if raw is not None:
                values[name] = _convert(field, raw)
        for name, value in (overrides or {}).items():
            if name not in declared:
                raise ValueError(f"unknown setting {name!r}")
            values[name] = _convert(declared[name], value)
        return cls(**values)


def variable(field: dataclasses.Field) -> str:
    return PREFIX + field.name.upper()


class Refused(ValueError):
    """A value that its setting does not take; `expected` says what it takes."""

    def __init__(self, value, expected: str):
        super().__init__(expected)
        self.value, self.expected = value, expected


def _convert(field: dataclasses.Field, value):
    declaration = field.metadata["declaration"]
    try:
        return FIELD_CONVERTERS[field.name](value, declaration)
    except Refused as refused:
        shown = "(not shown)" if declaration.secret else repr(refused.value)
        raise ValueError(f"setting {variable(field)}={shown} {refused.expected}") from None


def _integer(value, declaration: Declaration) -> int:
    lowest = 0 if declaration.may_be_zero else 1
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < lowest:
        raise Refused(value, "must be " + ("0 or a positive integer" if lowest == 0
                                           else "a positive integer"))
    return number


def _boolean(value, _declaration: Declaration) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() not in BOOLEANS:
        raise Refused(value, "must be true or false")
    return BOOLEANS[str(value).lower()]


def _text(value, declaration: Declaration) -> str:
    text = str(value).lower() if declaration.choices or declaration.lower else str(value)
    if declaration.choices and text not in declaration.choices:
        raise Refused(value, "must be one of " + ", ".join(declaration.choices))
    if declaration.pattern and not declaration.pattern[0].fullmatch(text):
        raise Refused(text, f"must be {declaration.pattern[1]}")
    return text


def _texts(value, declaration: Declaration) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(_text(item.strip(), declaration) for item in items if item.strip())


def _optional_path(value, _declaration: Declaration) -> Path | None:
    return Path(value) if str(value or "").strip() else None


def _policy(value, _declaration: Declaration) -> VersionPolicy:
    try:
        return VersionPolicy.parse(value)
    except ValueError as error:
        raise Refused(value, str(error)) from None


# One converter per type of setting: (the value given, its declaration) -> the value, or Refused.
CONVERTERS: dict[object, Callable] = {
    int: _integer,
    bool: _boolean,
    str: _text,
    tuple[str, ...]: _texts,
    Path: lambda value, _declaration: Path(value),
    Path | None: _optional_path,
    VersionPolicy: _policy,
}


def converters(cls) -> dict[str, Callable]:
    """Each field's converter, found by the field's type: at import, a setting of a type without
    a converter, or not declared with setting(), stops the service with its name."""
    kinds = get_type_hints(cls)
    wrong = [f"{field.name} (declare it with setting())" for field in fields(cls)
             if "declaration" not in field.metadata]
    wrong += [f"{name} (no converter for {kind}: add one to CONVERTERS)"
              for name, kind in kinds.items() if kind not in CONVERTERS]
    if wrong:
        raise TypeError(f"{cls.__name__}: " + "; ".join(wrong))
    return {name: CONVERTERS[kind] for name, kind in kinds.items()}


FIELD_CONVERTERS = converters(Settings)


def written(field: dataclasses.Field) -> str:
    """The field's default as a user would write it in its variable ("" for unset)."""
    default = field.default
    if default is None:
        return ""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, tuple):
        return ",".join(default)
    return str(default)


def markdown() -> str:
    """docs/settings.md: the table of every setting, from the declarations above."""
    lines = [
        "# Settings",
        "",
        "Every process of the service (the app, gunicorn, the launcher `python -m service`, the",
        "gRPC processes) reads these settings from its environment; `create_app(mapping)` may",
        "override them. Booleans are `true` or `false` (or `1`/`0`, `yes`/`no`, `on`/`off`); lists",
        "are comma-separated. A value a setting does not take stops the start with its name.",
        "",
        "This page is written from `service/settings.py`, where each setting is declared: edit",
        "the declaration, then run `python -m service.settings --markdown > docs/settings.md`.",
        "",
        "| variable | default | |",
        "|---|---|---|",
    ]
    for field in fields(Settings):
        declaration = field.metadata["declaration"]
        default = declaration.shown or (f"`{written(field)}`" if written(field) else "unset")
        doc = declaration.doc
        if declaration.by_launcher:
            doc = f"**set by the launcher** (`python -m service`), not by users: {doc}"
        lines.append(f"| `{variable(field)}` | {default} | {doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m service.settings --markdown > docs/settings.md")
    print(markdown(), end="")
