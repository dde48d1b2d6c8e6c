# Vista: make install | lint | typecheck | test | bench | demo
# `make test` and `make demo` install what they need first (apt packages when run as root or
# with sudo, and a virtualenv in .venv).

VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
APT_PACKAGES := redis-server prometheus prometheus-node-exporter graphite-carbon graphite-web \
	python3-whisper python3-venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-packages lint format typecheck test test-fast bench demo all clean

install: $(VENV)/.installed

system-packages:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

$(VENV)/.installed: pyproject.toml | system-packages
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bigquery]'
	touch $@

lint: install
	$(VENV)/bin/ruff check skyline tests bench
	$(VENV)/bin/ruff format --check skyline tests bench

format: install
	$(VENV)/bin/ruff format skyline tests bench
	$(VENV)/bin/ruff check --fix skyline tests bench

typecheck: install
	$(VENV)/bin/mypy

test: install
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: install
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) bench/fetch.py
	$(PY) bench/deliver.py

demo: install
	$(PY) bin/vista-demo

all: lint typecheck test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
