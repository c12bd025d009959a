"""Settings: defaults, then SERVING_* environment variables, then the mapping given to create_app."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

PREFIX = "SERVING_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_REPOSITORY = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class Settings:
    model_repository: Path = DEFAULT_REPOSITORY
    max_body_bytes: int = 16 * 1024 * 1024  # 413 above this
    max_batch: int = 4096  # rows per request; 413 above this
    intra_op_threads: int = 1  # one gunicorn worker per core: onnxruntime needs no more
    inter_op_threads: int = 1
    log_level: str = "info"

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
    try:
        if kind == "Path":
            return Path(value)
        if kind == "int":
            number = int(value)
            if number < 1:
                raise ValueError
            return number
        level = str(value).lower()
        if level not in LOG_LEVELS:
            raise ValueError
        return level
    except (TypeError, ValueError):
        expected = "one of " + ", ".join(LOG_LEVELS) if kind == "str" else "a positive integer"
        raise ValueError(f"setting {PREFIX}{name.upper()}={value!r} must be {expected}") from None
