"""The Flask side of the error mapping: every error a Flask route raises becomes JSON through
service.core.errors.answer; Werkzeug's own (no such route, method not allowed, too large) get
their messages here."""

from __future__ import annotations

import orjson
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from service.core.errors import answer


def error_response(message: str, status: int) -> Response:
    return Response(orjson.dumps({"error": message}), status=status, mimetype="application/json")


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
        return Response(body, status=status, mimetype="application/json",
                        headers=getattr(error, "headers", ()))
