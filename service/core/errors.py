"""Errors that carry their own HTTP status, and the one place that turns any error into JSON
(`answer`, used by the Flask handlers in service.rest.errors and by the plain-WSGI hot path).
Pure: no web framework here."""

from __future__ import annotations

import logging

import orjson

log = logging.getLogger(__name__)

SHORT = 40  # characters of a client's text quoted back in an error


def quote(text) -> str:
    """A client's string, quoted and cut short so that errors never echo large input."""
    text = str(text)
    return repr(text) if len(text) <= SHORT else repr(text[:SHORT]) + f"... ({len(text)} characters)"


class ServiceError(Exception):
    status = 500
    headers: tuple[tuple[str, str], ...] = ()  # beside the JSON body (REST)

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    status = 400


class ModelNotFound(ServiceError):
    status = 404

    def __init__(self, name: str, version: int | str | None = None):
        """`version`: a number, shown as it is, or a client's text that is no version, quoted."""
        where = f"model {quote(name)}"
        if version is not None:
            where += f" version {version if isinstance(version, int) else quote(version)}"
        super().__init__(f"{where} not found")


class PayloadTooLarge(ServiceError):
    status = 413


class RunOverBudget(ServiceError):
    """A run asked onnxruntime for more memory than its process's budget had left
    (SERVING_RUN_MEMORY_MB; service/repository/sessions.py): the request is too large to run."""
    status = 413


class UnsupportedMediaType(ServiceError):
    status = 415


class ModelNotReady(ServiceError):
    status = 503


class ModelBusy(ServiceError):
    """The model holds all the long runs it may (service/core/limits.py): try again shortly."""
    status = 503
    headers = (("Retry-After", "1"),)


class DeadlineExceeded(ServiceError):
    """The run was stopped at its time limit, or not started past the client's deadline: 504, as a
    gateway says that what it waited on did not answer in time (gRPC: DEADLINE_EXCEEDED)."""
    status = 504


def answer(error: Exception) -> tuple[int, bytes]:
    """The status and JSON body for an error raised while serving: its own status for a
    ServiceError; anything else is logged with its trace and answered 500 without one."""
    if isinstance(error, ServiceError):
        return error.status, orjson.dumps({"error": error.message})
    log.error("unhandled error", exc_info=error)
    return 500, orjson.dumps({"error": f"internal error ({type(error).__name__})"})
