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

OUTPUTS := $(or $(ADVPATCH_OUTPUT_DIR),outputs)

.PHONY: help venv demo demo-defences test test-fast lint system-deps generate bench fuzz compile images mlflow-ui clean

help:
	@echo "make demo [DATA=/path/to/Mnist]  run the MNIST experiment locally (kfp.local), print the results table"
	@echo "make demo-defences [DATA=...]    the same with an adaptive attacker against every defence"
	@echo "make test                        the whole test suite (what CI runs)"
	@echo "make test-fast                   the tests that start no server and no pipeline (day-to-day, 2-3 min)"
	@echo "make lint                        the linter (ruff) and the type checker (mypy, strict on the core)"
	@echo "make generate                    rewrite the components and pipeline signatures from the parameter table"
	@echo "make bench                       patch engine vs ART, certified defences, 50k images, memory, shards (outputs/bench/)"
	@echo "make fuzz [FUZZ_SECONDS=600]     the file readers under a coverage-guided fuzzer, each target in turn"
	@echo "make mlflow-ui                   open the local MLflow store at http://127.0.0.1:5000"
	@echo "make clean                       remove outputs/ (keeps .venv)"

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=77"
	$(PY) -m pip install --quiet -c constraints.txt -e '.[cpu,test]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/advpatch demo $(if $(DATA),--data "$(DATA)")

demo-defences: $(STAMP)
	$(VENV)/bin/advpatch run mnist-defences --output $(OUTPUTS)/demo-defences $(if $(DATA),-p data_dir="$(DATA)")

# Test files run in parallel (a file's tests stay together: they share fixtures), one worker per core
# and one more: the end-to-end tests spend much of their time starting processes and writing files.
WORKERS  ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 2) + 1 )))
PARALLEL ?= -n $(WORKERS) --dist loadfile

# What the tests need from the system beside the Python packages: Debian's chromium and fonts (the
# report and MLflow's UI as a person sees them) and PostgreSQL (the cluster's MLflow backend).
# Installed when missing and make runs as root (CI, a fresh machine); else one line says what to do.
SYSTEM_PACKAGES := chromium fonts-dejavu-core fonts-liberation postgresql

system-deps:
	@sh tests/system-deps.sh $(SYSTEM_PACKAGES)

test: $(STAMP) system-deps
	$(PY) -m pytest $(PARALLEL) --durations=15 $(PYTEST_ARGS)

# The tier without servers, pipelines or installs (markers in pyproject.toml; a test that starts one
# without its marker fails here)
test-fast: $(STAMP)
	ADVPATCH_TEST_TIER=fast $(PY) -m pytest $(PARALLEL) -m "not pipeline and not server and not slow" \
	  --durations=10 $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

generate: $(STAMP)
	$(PY) -m advpatch.app.codegen

mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000 \
	  --backend-store-uri sqlite:///$(abspath $(OUTPUTS))/mlflow/mlflow.db \
	  --default-artifact-root $(abspath $(OUTPUTS))/mlflow/artifacts

clean:
	rm -rf $(OUTPUTS)

bench: $(STAMP)
	$(PY) tests/benchmarks/bench_tasks.py $(TASK_BENCH_ARGS)
	$(PY) tests/benchmarks/bench_patch.py --resnet $(BENCH_ARGS)
	$(PY) tests/benchmarks/bench_certified.py $(CERTIFIED_BENCH_ARGS)
	$(PY) tests/benchmarks/bench_scale.py $(SCALE_BENCH_ARGS)
	$(PY) tests/benchmarks/bench_memory.py $(MEMORY_BENCH_ARGS)
	$(PY) tests/benchmarks/bench_shards.py $(SHARDS_BENCH_ARGS)
	$(PY) tests/benchmarks/bench_shards.py --architecture resnet50 --images 1024 $(SHARDS_BENCH_ARGS)

# Coverage-guided fuzzing (atheris) of every reader of a handed-over file; a crash stops it with the
# input saved as outputs/fuzz/<target>-crash-*. The corpus grows in outputs/fuzz/<target>/.
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	@for t in $$($(PY) tests/fuzz/fuzz_readers.py --list); do \
	  echo "== $$t ($(FUZZ_SECONDS) s)"; mkdir -p $(OUTPUTS)/fuzz/$$t; \
	  $(PY) tests/fuzz/fuzz_readers.py $$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    -artifact_prefix=$(OUTPUTS)/fuzz/$$t- $(OUTPUTS)/fuzz/$$t || exit 1; \
	done

# Compiled pipelines for a cluster: make compile REGISTRY=registry.example.com/ml TAG=0.1.0 [COMPILE_ARGS=--no-gpu]
REGISTRY ?= ghcr.io/advpatch
VERSION  := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' src/advpatch/__init__.py)
TAG      ?= $(VERSION)
compile: $(STAMP)
	$(VENV)/bin/advpatch compile --image-registry $(REGISTRY) --image-tag $(TAG) --output outputs/compiled $(COMPILE_ARGS)

# Runtime images (needs a Docker engine): make images REGISTRY=registry.example.com/ml [TAG=0.1.0-rc1] [PUSH=1]
# (the wheel inside is always the package's own version; TAG only names the image)
images: $(STAMP)
	rm -rf dist && $(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .
	docker build -f images/Dockerfile.cpu --build-arg ADVPATCH_VERSION=$(VERSION) -t $(REGISTRY)/advpatch:$(TAG) .
	docker build -f images/Dockerfile.gpu --build-arg ADVPATCH_VERSION=$(VERSION) -t $(REGISTRY)/advpatch:$(TAG)-gpu .
	$(if $(PUSH),docker push $(REGISTRY)/advpatch:$(TAG) && docker push $(REGISTRY)/advpatch:$(TAG)-gpu)
