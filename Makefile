# pacsnode: `make demo` sets everything up and runs the demo; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pacsnode-installed

.PHONY: setup system viewer demo test lint typecheck pytest bench clean engine images images-lock compose-test

setup: system $(STAMP)

system:
	@scripts/install-system.sh

# torch and torchvision are pinned as a pair (nnU-Net's trainer discovery imports torchvision);
# pyradiomics' sdist needs numpy and versioneer present and no build isolation.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools numpy versioneer
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --no-build-isolation pyradiomics
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# The OHIF 3 viewer (npm @ohif/app, pinned) for /viewer and the browser test; a no-op once cached,
# a message (and no viewer) when the npm registry cannot be reached.
viewer:
	@scripts/install-ohif.sh

demo: setup viewer
	$(VENV)/bin/pacsnode demo

lint: setup
	$(VENV)/bin/ruff check node analyzers sr_templates tests bench

typecheck: setup
	$(VENV)/bin/mypy node analyzers/contract.py analyzers/registry.py

pytest: setup viewer
	$(VENV)/bin/pytest -q --durations=25

test: lint typecheck pytest

bench: setup
	$(PY) -m bench.ingest

# Container images built here from Debian packages and the locked wheels (docs/operations.md,
# "Docker"): `engine` starts dockerd when none answers, `images` builds the base images when
# missing and then pacsnode, pacsnode-worker and pacsnode-orthanc, `images-lock` rewrites the
# Debian and Python locks, `compose-test` runs docker/compose.yaml end to end.
engine:
	@scripts/start-dockerd.sh

images: setup engine
	PYTHON=$(PY) docker/build.sh images

images-lock: setup
	PYTHON=$(PY) docker/build.sh lock

compose-test: setup images system
	PACSNODE_COMPOSE_TEST=1 $(VENV)/bin/pytest -q -rs -s tests/test_docker.py

clean:
	rm -rf var .demo .pytest_cache .mypy_cache .ruff_cache
