"""The queue budget: a request that waited too long for a worker is refused, not run.

nginx stamps every request it passes on with the moment it did (QUEUED_AT, its `$msec`,
replacing whatever a client sent under that name: service/process/nginx.py). A worker that
picks up a request older than SERVING_QUEUE_BUDGET_MS answers 503 with Retry-After at once,
without reading or decoding the body: under a spike the backlog drains at the cost of refusals,
not of runs whose clients have given up. The health routes and /metrics are never refused. The
wait is exported as serving_queue_wait_seconds. With the budget at 0 this middleware is not
installed at all (service/rest/app.py).
"""

from __future__ import annotations

import time

import orjson

from service.core import metrics

QUEUED_AT = "HTTP_X_FRONT_DOOR_QUEUED_AT"  # service.process.nginx.QUEUED_AT_HEADER
RETRY_AFTER = "1"  # seconds: a backlog past its budget drains within about one budget
NEVER_REFUSED = ("/v2/health/", "/metrics")


class QueueBudget:
    """WSGI middleware: 503 for a request that waited past the budget; `shed` is told of each."""

    def __init__(self, wsgi_app, budget_ms: int, shed=None):
        self.wsgi_app = wsgi_app
        self.budget = budget_ms / 1000
        self.budget_ms = budget_ms
        self.shed = shed
        self.observe = metrics.QUEUE_SECONDS.labels("rest").observe

    def __call__(self, environ, start_response):
        stamp = environ.get(QUEUED_AT)
        # Believed only from nginx, on gunicorn's unix socket (no REMOTE_ADDR), as the body file is.
        if stamp and not environ.get("REMOTE_ADDR"):
            try:
                waited = max(time.time() - float(stamp), 0.0)
            except ValueError:
                return self.wsgi_app(environ, start_response)
            self.observe(waited)
            if waited > self.budget and not environ.get("PATH_INFO", "").startswith(NEVER_REFUSED):
                return self.refuse(start_response, waited)
        return self.wsgi_app(environ, start_response)

    def refuse(self, start_response, waited: float):
        metrics.SHED_REQUESTS.labels("rest").inc()
        if self.shed is not None:
            self.shed()
        body = orjson.dumps({"error": f"the service is overloaded: the request waited {waited * 1000:.0f} "
                                      f"ms for a worker, over the queue budget of {self.budget_ms} ms; "
                                      "retry later"})
        start_response("503 Service Unavailable", [
            ("Content-Type", "application/json"), ("Retry-After", RETRY_AFTER),
            ("Content-Length", str(len(body)))])
        return [body]
