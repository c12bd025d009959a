"""Errors that carry their own HTTP status, and the one place that turns any error into JSON
(`answer`, used by the Flask handlers in service.rest.errors and by the plain-WSGI hot path).
Pure: no web framework here."""

from __future__ import annotations

import logging

import orjson

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    status = 400


class ModelNotFound(ServiceError):
    status = 404

    def __init__(self, name: str, version: str | int | None = None):
        from service.core.tensors import SHORT, quote  # tensors imports this module

        where = f"model {quote(name)}"
        if version is not None:  # a number, or a client's text that the registry quoted already
            text = str(version)
            if len(text) > SHORT:
                text = f"{text[:SHORT]}... ({len(text)} characters)"
            where += f" version {text}"
        super().__init__(f"{where} not found")


class PayloadTooLarge(ServiceError):
    status = 413


class UnsupportedMediaType(ServiceError):
    status = 415


class ModelNotReady(ServiceError):
    status = 503


def answer(error: Exception) -> tuple[int, bytes]:
    """The status and JSON body for an error raised while serving: its own status for a
    ServiceError; anything else is logged with its trace and answered 500 without one."""
    if isinstance(error, ServiceError):
        return error.status, orjson.dumps({"error": error.message})
    log.error("unhandled error", exc_info=error)
    return 500, orjson.dumps({"error": f"internal error ({type(error).__name__})"})
