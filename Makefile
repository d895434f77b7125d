# advpatch: every command a newcomer needs. `make demo`, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Re-install whenever the dependency pins change.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt 2>/dev/null | cksum | cut -d' ' -f1)
DATA   ?=
PYTEST_ARGS ?=

export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: help venv demo test bench compile images mlflow-ui clean

help:
	@echo "make demo [DATA=/path/to/Mnist]  run the MNIST experiment locally (kfp.local), print the results table"
	@echo "make test                        run the test suite"
	@echo "make bench                       patch engine vs ART: speed and strength (outputs/bench/results.json)"
	@echo "make mlflow-ui                   open the local MLflow store at http://127.0.0.1:5000"
	@echo "make clean                       remove outputs/ (keeps .venv)"

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[cpu,test]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/advpatch demo $(if $(DATA),--data "$(DATA)")

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000 \
	  --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow/mlflow.db \
	  --default-artifact-root $(CURDIR)/outputs/mlflow/artifacts

clean:
	rm -rf outputs

bench: $(STAMP)
	$(PY) tests/benchmarks/bench_patch.py $(BENCH_ARGS)

# Compiled pipelines for a cluster: make compile REGISTRY=registry.example.com/ml TAG=0.1.0 [COMPILE_ARGS=--no-gpu]
REGISTRY ?= ghcr.io/advpatch
TAG      ?= $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' src/advpatch/__init__.py)
compile: $(STAMP)
	$(VENV)/bin/advpatch compile --image-registry $(REGISTRY) --image-tag $(TAG) --output outputs/compiled $(COMPILE_ARGS)

# Runtime images (needs a Docker engine): make images REGISTRY=registry.example.com/ml [TAG=0.1.0] [PUSH=1]
images: $(STAMP)
	rm -rf dist && $(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .
	docker build -f images/Dockerfile.cpu --build-arg ADVPATCH_VERSION=$(TAG) -t $(REGISTRY)/advpatch:$(TAG) .
	docker build -f images/Dockerfile.gpu --build-arg ADVPATCH_VERSION=$(TAG) -t $(REGISTRY)/advpatch:$(TAG)-gpu .
	$(if $(PUSH),docker push $(REGISTRY)/advpatch:$(TAG) && docker push $(REGISTRY)/advpatch:$(TAG)-gpu)
