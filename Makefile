# The README's two commands. Each first creates or updates .venv, so a fresh clone needs nothing else.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segnb-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: venv test demo export clean-nbs bench

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip setuptools wheel
	# torch and torchvision must be a matched pair
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev,export,serve,data]"
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(VENV)/bin/python -m pytest -n 2 -q tests

demo: venv
	$(VENV)/bin/segnb demo

export: venv
	$(VENV)/bin/nbdev-export && $(VENV)/bin/nbdev-clean
