# Everything installs into ./.venv; nothing outside the project is touched.
#   make demo   install, then fine-tune the tiny DeepSeek-V3 on the shipped data (the main job)
#   make test   install the test extras, then run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install install-test demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/mfds train --config configs/deepseek_v3/finetune_tiny.yaml

test: install-test
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs build *.egg-info
