# Every target sets up the project-local virtual environment it needs, pinned by constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
PORT ?= 8000

.PHONY: serve test train import lint clean container-test bench soak audit stubs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Serving needs no TensorFlow: the serve extra only.
$(VENV)/.serve-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[serve,stubs]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[serve,stubs,train,dev]"
	touch $@

# The gRPC stubs, generated from the protocol's .proto with grpcio-tools (not committed; see
# service/stubs/__init__.py). The .sha256 stamp is written last and checked on import.
STUBS := service/stubs/grpc_predict_v2.sha256
$(STUBS): service/stubs/grpc_predict_v2.proto service/stubs/__main__.py
	$(BIN)/python -m service.stubs

stubs: $(VENV)/.serve-installed
	$(BIN)/python -m service.stubs

# nginx in front of gunicorn (python -m service); scripts/system-packages.sh installs nginx when missing.
serve: $(VENV)/.serve-installed $(STUBS)
	bash scripts/system-packages.sh nginx-light=nginx
	SERVING_BIND=0.0.0.0:$(PORT) $(BIN)/python -m service

train: $(VENV)/.dev-installed
	$(BIN)/python -m training --reports reports $(MODELS)

# make import MODEL=path/to/model.keras NAME=name [ARGS="--labels out=a,b --version 3"]
import: $(VENV)/.dev-installed
	$(BIN)/python -m training import "$(MODEL)" --name "$(NAME)" $(ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

# checkov pins older packaging and termcolor than the rest: it lives in a venv of its own.
$(VENV)/checkov/bin/checkov: deploy/checkov-constraints.txt | $(BIN)/python
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install --quiet --disable-pip-version-check \
		-c deploy/checkov-constraints.txt checkov
	touch $@

# The tests need nginx (the front door), Chromium (the page) and wrk (the front door under load):
# installed when missing.
test: lint $(VENV)/checkov/bin/checkov $(STUBS)
	bash scripts/system-packages.sh nginx-light=nginx chromium=chromium wrk=wrk
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache $(STUBS) service/stubs/*_pb2*.py

# Builds and runs the serving image with podman: see container/test.sh.
container-test: $(VENV)/.container-installed
	bash container/test.sh

$(VENV)/.container-installed: $(VENV)/.dev-installed
	$(PIP) -e ".[serve,train,dev,container]"
	touch $@

# About fourteen minutes (needs wrk, h2load and nginx): the service as users run it (python -m service,
# nginx in front) against a bare Flask baseline and a raw-WSGI ceiling, the headline in alternating
# rounds; then an imported MobileNetV3Small against its onnxruntime floor (python -m bench.run --only-image);
# then REST and gRPC past saturation (python -m bench.run --only-overload); then the memory of every
# process with the model cache off and on (python -m bench.memory).
bench: $(VENV)/.dev-installed $(STUBS)
	bash scripts/system-packages.sh nginx-light=nginx wrk=wrk nghttp2-client=h2load
	$(BIN)/python -m bench.run

# Two minutes at concurrency 32 through the front door: no failed request, stable p99, flat
# memory of gunicorn's workers (needs wrk and nginx). Then ten minutes of a hostile model
# repository polled every second under REST and gRPC load: no failed request, good versions
# served and broken ones reported within two polls (bench/repository_soak.py).
soak: $(VENV)/.dev-installed $(STUBS)
	bash scripts/system-packages.sh nginx-light=nginx wrk=wrk
	$(BIN)/python -m bench.soak
	$(BIN)/python -m bench.repository_soak

# Known vulnerabilities in the pinned versions (needs pip-audit's vulnerability service).
audit: $(VENV)/.dev-installed
	$(BIN)/pip-audit -r constraints.txt --no-deps --disable-pip --progress-spinner off
