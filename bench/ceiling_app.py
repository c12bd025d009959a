"""The raw-WSGI ceiling: what gunicorn's sync workers (and nginx in front of them) allow at best.

A WSGI callable with no framework, no parsing and no model: it reads the request body, as any
app must, and returns a fixed JSON answer the size of the service's single-row digits answer.
Run as `gunicorn -w 2 bench.ceiling_app:app`, the baseline's configuration; make bench runs
it bare and behind the service's front door. What the service does beyond this costs requests.
"""

ANSWER = (b'{"model_name":"digits","model_version":"1","outputs":[{"name":"probabilities",'
          b'"datatype":"FP32","shape":[1,10],"data":[0.017943937,0.022624023,0.0048533953,'
          b'0.0035390598,0.015041506,0.808804,0.06138828,0.050526258,0.0034378755,0.011841677]}]}')
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))]


def app(environ, start_response):
    length = environ.get("CONTENT_LENGTH")
    if length:
        environ["wsgi.input"].read(int(length))
    start_response("200 OK", list(HEADERS))
    return [ANSWER]
