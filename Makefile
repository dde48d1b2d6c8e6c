# Vista: make install | lint | typecheck | test | test-fast | bench | demo
# `make test` and `make demo` install what they need first (apt packages when run as root or
# with sudo, and a virtualenv in .venv). `make test-fast`, `lint` and `typecheck` need only the
# virtualenv (`make venv`): no Debian package, no real server.

VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# `make test` runs on this many pytest-xdist workers, each with its own servers: most of the
# suite's time is real-time waiting (outages, kill storms), not CPU. One test at a time is
# handed out (--maxschedchunk 1) so the long ones spread over the workers (tests/conftest.py).
TEST_WORKERS ?= 4
APT_PACKAGES := redis-server redis-sentinel prometheus prometheus-node-exporter graphite-carbon graphite-web \
	python3-whisper python3-venv tinyproxy
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install venv system-packages lint format typecheck test test-fast bench demo all clean

install: system-packages
	@$(MAKE) --no-print-directory venv

venv: $(VENV)/.installed

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

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bigquery]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check skyline tests bench tools
	$(VENV)/bin/ruff format --check skyline tests bench tools
	$(VENV)/bin/lint-imports  # the import contracts of pyproject.toml (docs/architecture.md)

format: venv
	$(VENV)/bin/ruff format skyline tests bench tools
	$(VENV)/bin/ruff check --fix skyline tests bench tools

typecheck: venv
	$(VENV)/bin/mypy

test: install
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --maxschedchunk 1 $(PYTEST_ARGS)

# tests/unit (no socket) and tests/loopback (pure-Python servers on 127.0.0.1), fakeredis for
# the queue's Lua scripts; tests/integration (real servers) is `make test`'s.
test-fast: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit tests/loopback $(PYTEST_ARGS)

bench: install
	$(PY) bench/fetch.py
	$(PY) bench/deliver.py
	$(PY) bench/bigquery.py

demo: install
	$(PY) bin/vista-demo

all: lint typecheck test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache *.egg-info
