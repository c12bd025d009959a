# Serving image (default target, no TensorFlow) and a training image, from one base.
# The base is an argument so that a locally built Debian image can stand in for the default.
ARG BASE_IMAGE=python:3.11-slim

# --- dependencies of each extra, installed into a venv that the final stages copy -----------
FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY pyproject.toml constraints.txt ./
# pyproject.toml is the one list of dependencies: read the extras from it (tomllib is stdlib).
# Behind a TLS-inspecting proxy, pass its CA bundle as the build secret "ca" (optional).
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['serve']))" > serve.txt \
 && python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['optional-dependencies']['train']))" > train.txt \
 && python3 -m venv /opt/serve \
 && /opt/serve/bin/pip install -c constraints.txt -r serve.txt \
 && /opt/serve/bin/pip uninstall -y -q pip setuptools

# --- the gRPC stubs, generated from the protocol's .proto by grpcio-tools in a venv of their
# own: the serving image copies the stubs, not the generator (see service/stubs/__init__.py) ----
FROM deps AS stubs
COPY service/__init__.py service/
COPY service/stubs/__init__.py service/stubs/__main__.py service/stubs/grpc_predict_v2.proto service/stubs/
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['optional-dependencies']['stubs']))" > stubs.txt \
 && python3 -m venv /opt/stubs \
 && /opt/stubs/bin/pip install -c constraints.txt -r stubs.txt \
 && /opt/stubs/bin/python -m service.stubs

FROM deps AS train-deps
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv /opt/train \
 && /opt/train/bin/pip install -c constraints.txt -r serve.txt -r train.txt

# --- the training image: `docker compose --profile train run trainer` -----------------------
FROM ${BASE_IMAGE} AS train
COPY --from=train-deps /opt/train /opt/train
ENV PATH=/opt/train/bin:$PATH PYTHONUNBUFFERED=1 PYTHONPATH=/app
WORKDIR /app
COPY modelcard/ modelcard/
COPY training/ training/
COPY service/ service/
ENTRYPOINT ["python3", "-m", "training"]
CMD ["--repository", "/app/models", "--reports", "/app/reports"]

# --- the serving image ----------------------------------------------------------------------
FROM ${BASE_IMAGE} AS serve
# tini is PID 1: it forwards SIGTERM to python -m service, which stops nginx, gunicorn and the
# gRPC processes gracefully, and reaps zombies. nginx is the front door that buffers slow clients.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini nginx-light \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin serving \
 && install -d -m 0700 -o serving -g serving /var/cache/onnx-serving
COPY --from=deps /opt/serve /opt/serve
WORKDIR /app
COPY modelcard/ modelcard/
COPY service/ service/
COPY --from=stubs /build/service/stubs/ service/stubs/
COPY models/ /models/
ENV PATH=/opt/serve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    SERVING_MODEL_REPOSITORY=/models \
    SERVING_MODEL_CACHE=/var/cache/onnx-serving \
    SERVING_BIND=0.0.0.0:8000 \
    SERVING_GRPC_BIND=0.0.0.0:8081
USER 10001
# REST (nginx in front of gunicorn) and the Open Inference Protocol over gRPC.
EXPOSE 8000 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python3", "-m", "service"]
