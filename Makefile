# Everything installs into ./.venv; nothing outside the project is touched.
#   make demo   install, then fine-tune the tiny DeepSeek-V3 on the shipped data (the main job)
#   make test   install the test extras, then run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install install-test browser demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[test]"
	@$(MAKE) --no-print-directory browser
	touch $@

# Headless Chromium renders `mfds report` pages in the tests. Best effort: without root (or
# passwordless sudo) or apt it is skipped, and the render test says so.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  command -v apt-get >/dev/null 2>&1 && \
	  ( $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium ) >/dev/null 2>&1 \
	  && echo "installed chromium (for the report render test)" \
	  || echo "note: chromium not installed; the report render test will be skipped"; }

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/mfds train --config configs/deepseek_v3/finetune_tiny.yaml --set train.resume=auto

test: install-test
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=30 tests

clean:
	rm -rf $(VENV) runs build *.egg-info
