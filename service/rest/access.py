"""Access control: API keys (bearer tokens) and CORS, as WSGI middleware (README, Access control).

Off unless keys (SERVING_API_KEYS_FILE, SERVING_API_KEYS) or origins (SERVING_CORS_ORIGINS) are
set. When on, every request passes these steps in order, each answering for itself:

1. a CORS preflight (OPTIONS with Access-Control-Request-Method) is answered here, without a key
   (browsers send none): 204 for an allowed origin, method and headers, else 403;
2. a request whose Origin is neither allowed nor this server's own (the same scheme, host and
   port) is refused (403), so that a page elsewhere cannot run an inference it may not even read;
3. with keys, a route outside PUBLIC needs `Authorization: Bearer <key>`: 401 with a
   WWW-Authenticate challenge otherwise (RFC 6750);
4. the bodies a cross-site form can send without a preflight (form-encoded, multipart, plain
   text) are refused (415).

The own origin's scheme is gunicorn's wsgi.url_scheme: http, or https when the request carries
X-Forwarded-Proto: https (or another of gunicorn's secure_scheme_headers) from a peer gunicorn
trusts: nginx on the unix socket behind the front door, which passes on what its own client sent
(a proxy that terminates TLS), and FORWARDED_ALLOW_IPS (127.0.0.1) without it. Trusting a
client that sets it itself costs nothing: a browser cannot add the header without a preflight,
refused to a page elsewhere, and any other client can send any Origin anyway.

Answers to an allowed origin carry Access-Control-Allow-Origin, errors included. Keys are held as
SHA-256 digests and compared in constant time; no message, log line or repr shows one. The
launcher never imports grpc, so the gRPC interceptor lives in service/grpc/guard.py, over Keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from werkzeug.wrappers import Response

from service.rest.errors import error_response
from service.settings import Settings

REALM = "onnx-serving"
# RFC 6750's b64token: what may follow "Bearer " in a header. Keys must be long enough not to guess.
TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MIN_KEY_LENGTH = 16
# Open without a key, by exact path; every other path needs one (default deny). Which of the
# kinds are open: "page" always, "health" and "metrics" by setting (public_health, public_metrics).
PUBLIC = {
    "/": "page",
    "/openapi.json": "page",
    "/v2/health/live": "health",
    "/v2/health/ready": "health",
    "/metrics": "metrics",
}
# The page's files: Flask's static rule takes every path under this prefix (and refuses `..`).
STATIC = "/static/"
# What a cross-site <form> can send without a preflight (the CORS-safelisted Content-Types).
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
ALLOWED_METHODS = ("GET", "POST", "HEAD")
ALLOWED_HEADERS = ("Authorization", "Content-Type", "Inference-Header-Content-Length", "X-Request-ID")
EXPOSED_HEADERS = "Inference-Header-Content-Length, X-Request-ID, WWW-Authenticate"
PREFLIGHT_MAX_AGE = "600"  # seconds a browser may reuse a preflight's answer


class Keys:
    """The API keys, as digests; `refusal` says why an Authorization header does not pass."""

    def __init__(self, keys: tuple[str, ...]):
        self.digests = tuple(hashlib.sha256(key.encode()).digest() for key in keys)

    def __bool__(self) -> bool:
        return bool(self.digests)

    @classmethod
    def load(cls, settings: Settings) -> Keys:
        """The keys of the file and of the setting; ValueError (with no key in its message) for a
        file that cannot be read, holds no key, or a key that cannot be sent in a header."""
        keys = [("SERVING_API_KEYS", n, key) for n, key in enumerate(settings.api_keys, 1)]
        path = settings.api_keys_file
        if path is not None:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as error:
                reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
                raise ValueError(f"SERVING_API_KEYS_FILE={str(path)!r} cannot be read ({reason})") from None
            found = [("SERVING_API_KEYS_FILE line", n, line.strip()) for n, line in enumerate(lines, 1)
                     if line.strip() and not line.lstrip().startswith("#")]
            if not found:
                raise ValueError(f"SERVING_API_KEYS_FILE={str(path)!r} holds no key (one per line; "
                                 "blank lines and # comments are skipped)")
            keys += found
        for where, number, key in keys:
            if len(key) < MIN_KEY_LENGTH or not TOKEN.fullmatch(key):
                raise ValueError(f"{where} {number}: an API key must be at least {MIN_KEY_LENGTH} "
                                 "characters of A-Z a-z 0-9 - . _ ~ + / (then = padding only)")
        return cls(tuple(key for _, _, key in keys))

    def refusal(self, authorization: str | None) -> tuple[str | None, str] | None:
        """None when the header carries a valid key; else (RFC 6750 error code or None, message)."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            message = ("this route needs an API key: send the header Authorization: Bearer <key>"
                       if not authorization else "the Authorization header must be Bearer <key>")
            return None, message
        token = token.strip()
        presented = hashlib.sha256(token.encode("latin-1", "replace")).digest()
        found = False
        for digest in self.digests:  # every key compared, so timing tells nothing of which
            found |= hmac.compare_digest(presented, digest)
        if found and TOKEN.fullmatch(token):
            return None
        return "invalid_token", "the API key is not valid"


class AccessControl:
    """WSGI middleware: the steps of this module's docstring, before the app sees the request."""

    def __init__(self, wsgi_app, keys: Keys, settings: Settings):
        self.wsgi_app = wsgi_app
        self.keys = keys
        self.origins = frozenset(settings.cors_origins)
        self.any_origin = "*" in self.origins
        opened = {"page": True, "health": settings.public_health, "metrics": settings.public_metrics}
        self.public = frozenset(path for path, kind in PUBLIC.items() if opened[kind])

    def __call__(self, environ, start_response):
        origin = environ.get("HTTP_ORIGIN")
        start = self.with_cors_headers(origin, start_response)
        if origin is not None and not self.origin_allowed(origin, environ):
            return error_response(f"requests from origin {origin[:100]!r} are not allowed "
                                  "(SERVING_CORS_ORIGINS)", 403)(environ, start)
        if environ["REQUEST_METHOD"] == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ:
            return self.preflight(environ, start)
        path = environ.get("PATH_INFO", "")
        if self.keys and path not in self.public and not path.startswith(STATIC):
            refused = self.keys.refusal(environ.get("HTTP_AUTHORIZATION"))
            if refused is not None:
                code, message = refused
                challenge = f'Bearer realm="{REALM}"'
                if code:
                    challenge += f', error="{code}", error_description="{message}"'
                response = error_response(message, 401)
                response.headers["WWW-Authenticate"] = challenge
                return response(environ, start)
        mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        if mimetype in FORM_TYPES:
            return error_response(
                f"Content-Type {mimetype!r} is not accepted while access control is on (a page "
                "elsewhere could send it in a form): send application/json", 415)(environ, start)
        return self.wsgi_app(environ, start)

    def origin_allowed(self, origin: str, environ) -> bool:
        """Listed, or this server's own (the page: browsers send Origin on its POSTs): an http page
        is not the origin of a request that came over https, nor the other way round."""
        if self.any_origin or origin in self.origins:
            return True
        own = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"
        return origin.lower() == own.lower()

    def with_cors_headers(self, origin: str | None, start_response):
        if not self.origins:
            return start_response
        listed = origin is not None and (self.any_origin or origin in self.origins)

        def start(status: str, headers: list, exc_info=None):
            if not self.any_origin:
                headers.append(("Vary", "Origin"))  # the answer differs by Origin: caches must know
            if listed:
                headers.append(("Access-Control-Allow-Origin", "*" if self.any_origin else origin))
                headers.append(("Access-Control-Expose-Headers", EXPOSED_HEADERS))
            return start_response(status, headers, exc_info)

        return start

    def preflight(self, environ, start):
        """A browser asks whether it may send a request: the origin was checked before."""
        if not environ.get("HTTP_ORIGIN"):
            return error_response("a CORS preflight needs an Origin header", 403)(environ, start)
        method = environ["HTTP_ACCESS_CONTROL_REQUEST_METHOD"].strip()
        if method not in ALLOWED_METHODS:
            return error_response(f"method {method[:20]!r} is not allowed", 403)(environ, start)
        allowed = {name.lower() for name in ALLOWED_HEADERS}
        for name in environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "").split(","):
            if name.strip() and name.strip().lower() not in allowed:
                return error_response(f"header {name.strip()[:40]!r} is not allowed; allowed: "
                                      + ", ".join(ALLOWED_HEADERS), 403)(environ, start)
        response = Response(status=204)
        del response.headers["Content-Type"]  # no body
        response.headers["Access-Control-Allow-Methods"] = ", ".join(ALLOWED_METHODS)
        response.headers["Access-Control-Allow-Headers"] = ", ".join(ALLOWED_HEADERS)
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        return response(environ, start)


def middleware(wsgi_app, settings: Settings):
    """The app behind access control, or the app itself when access control is off."""
    keys = Keys.load(settings)
    if not keys and not settings.cors_origins:
        return wsgi_app
    return AccessControl(wsgi_app, keys, settings)
