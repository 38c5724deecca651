# One command each: `make demo` (the whole cycle on this machine), `make test` (the test suite).
# Both install what is missing: a virtualenv with the project, Docker and a locally
# bootstrapped base image (see scripts/setup-test-env.sh).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
IMAGE  ?= cos-spot-runner/workload:dev
BASE   ?= cos-spot-runner/base:bookworm-2
TORCH_IMAGE   ?= cos-spot-runner/workload-torch:dev
TORCH_VERSION ?= 2.13.0
# Two pytest workers: the Docker tests in order on one, the rest on the other (tests/conftest.py).
# PARALLEL= runs everything in this one process.
PARALLEL ?= -n 2 --dist loadgroup

.PHONY: setup env image image-torch demo test test-no-torch test-fast chaos bench clean

$(BIN)/runner: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/runner  ## virtualenv with the runner and the test tools

env: setup  ## Docker engine, dockerd, and the bootstrapped base image
	RUNNER_BASE_IMAGE=$(BASE) bash scripts/setup-test-env.sh

image: env  ## the workload image (entrypoint + examples), built from the local base
	@mkdir -p .cache
	@docker build -t $(IMAGE) --build-arg BASE_IMAGE=$(BASE) . >.cache/image-build.log 2>&1 \
	  || { cat .cache/image-build.log; exit 1; }
	@echo "built $(IMAGE)" >&2

image-torch: env  ## the workload image on PyTorch (CPU): the torch base is built once, then code layers only
	@TORCH_VERSION=$(TORCH_VERSION) RUNNER_BASE_IMAGE=$(BASE) bash scripts/build-torch-base.sh
	@docker build -t $(TORCH_IMAGE) --build-arg BASE_IMAGE=cos-spot-runner/torch-base:$(TORCH_VERSION) . \
	  >.cache/image-torch-build.log 2>&1 || { cat .cache/image-torch-build.log; exit 1; }
	@echo "built $(TORCH_IMAGE)" >&2

demo: image  ## submit → preempt → resume → finish, on the local backend
	PATH=$(CURDIR)/$(BIN):$$PATH IMAGE=$(IMAGE) bash scripts/demo.sh

test: image image-torch  ## the whole suite (unit, integration with real Docker, end to end)
	RUNNER_TEST_IMAGE=$(IMAGE) RUNNER_TEST_TORCH_IMAGE=$(TORCH_IMAGE) $(BIN)/pytest -q $(PARALLEL)

test-no-torch: image  ## the whole suite but the PyTorch tests: no torch base image, no torch wheels to fetch
	RUNNER_TEST_IMAGE=$(IMAGE) $(BIN)/pytest -q -m "not torch"

test-fast: setup  ## tests that need no Docker
	$(BIN)/pytest -q -m "not docker"

chaos: image image-torch  ## the chaos suite in its long form and the long variants (RUNNER_CHAOS_CYCLES=N to choose the cycles)
	RUNNER_TEST_IMAGE=$(IMAGE) RUNNER_TEST_TORCH_IMAGE=$(TORCH_IMAGE) RUNNER_CHAOS=long $(BIN)/pytest -q -m "chaos or long"

bench: image  ## benchmarks, printed as ratios
	RUNNER_TEST_IMAGE=$(IMAGE) $(BIN)/python -m bench

clean:
	rm -rf $(VENV) .cache .pytest_cache .hypothesis
