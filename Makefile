# skinseg developer and user entry points. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Stamps record what was installed, so `make test` after `make install` does not reinstall.
STAMP_ALL := $(VENV)/.install-stamp-all
STAMP_RT  := $(VENV)/.install-stamp-runtime

.PHONY: help install install-runtime test test-all lint fixup demo bench reference-model evaluate-reference clean distclean

help:
	@echo "make install   create .venv and install skinseg with the cpu, train, dev and cluster extras"
	@echo "make test      install if needed, then run the fast test suite"
	@echo "make test-all  also run the slow tests"
	@echo "make lint      ruff (style, bugs, bandit security rules)"
	@echo "make demo      segment samples/ with the bundled model into demo_output/ (gallery: index.html)"
	@echo "make bench     performance benchmarks, figures in build/bench/ (UPDATE_DOCS=1: into docs/ and benchmarks/)"
	@echo "make reference-model   retrain, export and install the bundled model (about 1.5 hours on 2 cores)"
	@echo "make evaluate-reference   the bundled model's figures on isic-raw (MODEL_CARD.md)"
	@echo "make clean     remove what the demo, evaluations, builds and tests wrote (not runs/: trained models)"
	@echo "make distclean also remove runs/, clinic/, grid.png and .venv: everything skinseg made in the repository"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The cpu extra brings onnxruntime; for an NVIDIA GPU: make install RUNTIME_EXTRA=gpu (README, "Install").
RUNTIME_EXTRA ?= cpu

$(STAMP_ALL): pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[$(RUNTIME_EXTRA),train,dev,cluster]'
	touch $@ $(STAMP_RT)

$(STAMP_RT): pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[$(RUNTIME_EXTRA)]'
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

demo: $(STAMP_RT)
	rm -rf demo_output
	$(VENV)/bin/skinseg infer samples/ --output demo_output/
	@echo "open demo_output/index.html for the gallery (input, mask and overlay of each sample)"
	@echo "the skinseg command is $(VENV)/bin/skinseg (or: source $(VENV)/bin/activate, then skinseg)"

# OV_PATH: a folder where onnxruntime-openvino was installed with `pip install --target`, to measure OpenVINO too.
# The figures go to build/bench/; UPDATE_DOCS=1 writes them into the tracked docs/*.md and benchmarks/results.json.
BENCH_DOCS := $(if $(UPDATE_DOCS),docs/,build/bench/)
BENCH_JSON := $(if $(UPDATE_DOCS),benchmarks/,build/bench/)
bench: $(STAMP_ALL)
	mkdir -p build/bench
	$(PY) benchmarks/bench_augment.py --size 512 --count 200
	$(PY) benchmarks/bench_folder.py --markdown $(BENCH_DOCS)folder_performance.md
	$(PY) benchmarks/bench_infer.py --levers --out $(BENCH_JSON)results.json --markdown $(BENCH_DOCS)performance.md $(if $(OV_PATH),--ov-path $(OV_PATH))
	@echo "figures in $(BENCH_DOCS)folder_performance.md, $(BENCH_DOCS)performance.md and $(BENCH_JSON)results.json"

DATA    ?= ../shared/data
MODELS  := runtime/models

# The bundled model: trained on isic2017-train, chosen on isic-raw (MODEL_CARD.md). The .keras file goes to
# reference/ (kept in the repository, outside the runtime wheel) for fine-tuning; the ONNX files to runtime/models.
# A new model needs new cards beside it (runtime/models/*.card.json: its sha256 and MODEL_CARD.md's figures; the
# scale figures of docs/strategies.md): `skinseg model info` and the --scale warning use a card only with its file.
reference-model: $(STAMP_ALL)
	$(VENV)/bin/skinseg train --config configs/default_model.config --output runs/reference --force
	$(VENV)/bin/skinseg export runs/reference
	mkdir -p $(MODELS) reference
	cp runs/reference/model.onnx $(MODELS)/skinseg_default.onnx
	$(PY) -c "import keras, sys; keras.saving.load_model(sys.argv[1], compile=False).save(sys.argv[2])" \
	  runs/reference/best_model.keras reference/skinseg_default.keras
	$(MAKE) evaluate-reference

# The figures of MODEL_CARD.md: both bundled files on isic-raw at default settings.
evaluate-reference: $(STAMP_RT)
	for m in skinseg_default; do \
	  $(VENV)/bin/skinseg evaluate --model $(MODELS)/$$m.onnx --images $(DATA)/isic-raw/images \
	    --masks $(DATA)/isic-raw/masks --output eval/$$m --quiet || exit $$?; \
	done

# What skinseg writes in the repository. Outside it: the folders given to `skinseg infer --output`, `evaluate
# --output` and `data prepare --output`; training leaves ~/.keras/keras.json and ~/.cache/matplotlib (README).
clean:
	rm -rf demo_output eval build dist .pytest_cache .ruff_cache .hypothesis *.egg-info
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf runs clinic grid.png $(VENV)
