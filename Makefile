# The two commands in README.md: `make reproduce` and `make test`; `make lab` opens the notebooks
# in JupyterLab. Each creates (or reuses) a local virtual environment in .venv and installs what
# it needs. `make browser` installs headless Chromium (Debian's package) for the report's
# browser test, which skips without one.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned here (a CPU wheel for Python 3.11 is cached on the dev machines; a looser
# spec pulls a multi-GB CUDA build). pyproject.toml keeps a range for library users.
TORCH_SPEC ?= torch==2.13.0
KRONFLUENCE_SPEC ?= kronfluence==1.0.1
PRESET ?= default

# Offline real data: use ../shared/data when it exists and the user has not chosen a folder.
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(origin TRACIN_WE_DATA_DIR), undefined)
ifneq ($(wildcard $(SHARED_DATA)/ag_news),)
export TRACIN_WE_DATA_DIR := $(SHARED_DATA)
endif
endif

# apt-get needs root: sudo where we are not root (non-interactive: fails rather than asks).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
# JupyterLab refuses to run as root (containers) unless told.
LAB_ARGS ?= $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: reproduce pretrained test lab explore browser lint benchmark clean

# kronfluence (method "ekfac") goes in without the torchvision it declares and never imports
# (pyproject.toml: peers): PyPI's torchvision is built for CUDA torch and breaks transformers.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]" "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --no-deps "$(KRONFLUENCE_SPEC)"
	touch $@

# The default preset into runs/default/ and figures/, then docs/results.md and README's headline
# from its metrics (results_page also reads runs/deletion-models, runs/deletion-peers,
# runs/layers, runs/lds-peers, runs/lds-bert and runs/variance where they exist).
reproduce: $(VENV)/.installed
	$(PY) -m tracin_we.reproduce --preset $(PRESET)
	[ "$(PRESET)" != default ] || $(PY) -m tracin_we.report.results_page
	$(PY) -m tracin_we.report.headline

# The pretrained setting (fine-tuned MiniLM: 01/02/06/07; the CNN with MiniLM's word embeddings:
# 03/08) into figures/pretrained/, then docs/pretrained.md from its metrics (paired with
# runs/default/ when `make reproduce` has run); both targets then rewrite README's headline
# table from the two runs, once both exist.
pretrained: $(VENV)/.installed
	$(PY) -m tracin_we.reproduce --preset pretrained
	$(PY) -m tracin_we.report.pretrained_page
	$(PY) -m tracin_we.report.headline

test: $(VENV)/.installed
	$(PY) -m ruff check tracin_we tests benchmarks
	$(PY) -m ruff format --check tracin_we tests benchmarks
	$(PY) -m pytest

lab: $(VENV)/.installed
	$(PY) -m jupyterlab $(LAB_ARGS) notebooks

# The explorer page (Voila) on http://127.0.0.1:8866/: the default and pretrained presets' runs.
explore: $(VENV)/.installed
	$(PY) -m tracin_we.explore

browser:
	@command -v chromium || command -v chromium-browser || command -v google-chrome || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium && command -v chromium; }

benchmark: $(VENV)/.installed
	$(PY) benchmarks/bench_tracin_we.py

clean:
	rm -rf runs
