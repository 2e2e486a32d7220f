# skinseg developer and user entry points. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Stamps record what was installed, so `make test` after `make install` does not reinstall.
STAMP_ALL := $(VENV)/.install-stamp-all
STAMP_RT  := $(VENV)/.install-stamp-runtime

.PHONY: help install install-runtime test test-all lint fixup demo bench clean

help:
	@echo "make install   create .venv and install skinseg with the train and dev extras"
	@echo "make test      install if needed, then run the fast test suite"
	@echo "make test-all  also run the slow tests"
	@echo "make lint      ruff (style, bugs, bandit security rules)"
	@echo "make demo      the main job on the bundled default"
	@echo "make bench     performance benchmarks"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP_ALL): pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[train,dev]'
	touch $@ $(STAMP_RT)

$(STAMP_RT): pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	touch $@

install: $(STAMP_ALL)

install-runtime: $(STAMP_RT)

test: $(STAMP_ALL)
	$(PY) -m pytest -n 2 --dist loadfile

test-all: $(STAMP_ALL)
	$(PY) -m pytest -n 2 --dist loadfile -m ""

lint: $(STAMP_ALL)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fixup: $(STAMP_ALL)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: $(STAMP_ALL)
	rm -rf demo_output
	$(VENV)/bin/skinseg synth demo_output/data --count 24 --size 128x96 --seed 0 --quiet
	$(VENV)/bin/skinseg train --config configs/demo.config --quiet
	@echo "demo: run directory demo_output/run (best_model.keras, history.csv, curves.png)"

bench: $(STAMP_ALL)
	$(PY) benchmarks/bench_augment.py --size 512 --count 200

clean:
	rm -rf demo_output .pytest_cache .ruff_cache build *.egg-info
