# Quick start:  make run   (install everything, then the default main job)
#               make test  (install everything, then the test suite)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/compare
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup run test lint format smoke bench clean

# apt: the real Fashion-MNIST files (Debian package dataset-fashion-mnist).
# pip: the library with every extra the experiments and tests use.
.setup-stamp: pyproject.toml
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[experiments,tfds,test]'
	@touch $@

setup: .setup-stamp

run: setup
	$(PY) -m experiments.compare --workdir $(WORKDIR)

# pytest exits 5 when it collected no test: that is a failure here.
test: setup
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# ruff: lint rules and formatting of the whole tree (config in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m benchmarks.run --out runs/bench.json

clean:
	rm -rf $(VENV) .setup-stamp
