"""Errors that carry their own HTTP status, and the one place that turns any error into JSON
(`answer`, used by the Flask handlers and by the plain-WSGI hot path)."""

from __future__ import annotations

import logging

import orjson
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

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
        from service.tensors import SHORT, quote  # tensors imports this module

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


def error_response(message: str, status: int) -> Response:
    return Response(orjson.dumps({"error": message}), status=status, mimetype="application/json")


def answer(error: Exception) -> tuple[int, bytes]:
    """The status and JSON body for an error raised while serving: its own status for a
    ServiceError; anything else is logged with its trace and answered 500 without one."""
    if isinstance(error, ServiceError):
        return error.status, orjson.dumps({"error": error.message})
    log.error("unhandled error", exc_info=error)
    return 500, orjson.dumps({"error": f"internal error ({type(error).__name__})"})


def register(app: Flask) -> None:
    """Every error mapping, in one place; the last resort logs and answers 500 without a trace."""

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        messages = {
            404: "no such route",
            405: "method not allowed",
            413: "request body is larger than the configured limit",
        }
        message = messages.get(error.code, error.description or error.name)
        response = error_response(message, error.code or 500)
        if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def service_error(error: Exception):
        status, body = answer(error)
        return Response(body, status=status, mimetype="application/json")
