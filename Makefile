# model-router: build, test and bench entry points (GNU make).
# Works on a fresh Debian machine that has only Python 3.11: `make test` creates
# the venv and installs the Debian tools the tests and bench need.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# Written after a successful install; pyproject.toml changes trigger a reinstall.
VENV_STAMP := $(VENV)/.installed
BENCH_ARGS ?=

# Debian packages the tests and bench call as binaries. Add new ones here, as PACKAGE:COMMAND
# when the command is named otherwise. prometheus ships both `prometheus` and `promtool`;
# redis-server is the cluster tests' Redis.
APT_PACKAGES := nginx wrk prometheus chromium redis-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export PIP_DISABLE_PIP_VERSION_CHECK := 1

# $(call apt_install,PACKAGES): quiet apt-get; on failure the full log is shown.
# The lock timeout waits for another apt run instead of failing at once.
define apt_install
	log=$$(mktemp); \
	echo "apt-get install $(1)"; \
	if ! { $(SUDO) apt-get update -qq \
	       && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	          -o DPkg::Lock::Timeout=600 --no-install-recommends $(1); } >"$$log" 2>&1; then \
	    cat "$$log" >&2; rm -f "$$log"; echo "apt-get install $(1) failed" >&2; exit 1; \
	fi; \
	rm -f "$$log"
endef

# The integration suite's real model server (MLServer + sklearn, tritonclient) lives in a venv of
# its own: its pins must not constrain the router's, and it is built once and kept.
MLSERVER_VENV := .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.installed

# The data path compiled with mypyc (setup.py lists the modules): C extensions beside their sources,
# rebuilt whenever one of them changes. Tests, bench and demo run against them; the package still
# runs as pure Python without them (`make clean`).
NATIVE_SRC := $(shell sed -n 's/^    "\(router\/[^"]*\.[pyc]*\)",$$/\1/p' setup.py)
NATIVE_STAMP := build/native.stamp

.PHONY: test test-integration mlserver-env lint bench demo deps native clean distclean $(VENV)

$(VENV): $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	@# Debian's python3 lacks ensurepip (so venv fails) until python3-venv is installed.
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { $(call apt_install,python3-venv); }
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

native: $(NATIVE_STAMP)

$(NATIVE_STAMP): $(NATIVE_SRC) setup.py $(VENV_STAMP)
	@# gcc and the Python headers: Debian's python3-dev when the interpreter's own are missing.
	@command -v gcc >/dev/null || { $(call apt_install,gcc libc6-dev); }
	@$(PY) -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	    || { $(call apt_install,python3-dev); }
	@# Extensions of modules no longer listed in setup.py would shadow their sources: start clean.
	find router -name '*.so' -delete
	MODEL_ROUTER_NATIVE=1 $(PY) setup.py -q build_ext --inplace --force >build-native.log 2>&1 \
	    || { cat build-native.log >&2; exit 1; }
	@rm -f build-native.log; mkdir -p build; touch $@

mlserver-env: $(MLSERVER_STAMP)

$(MLSERVER_STAMP): tests/integration/requirements.txt
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { $(call apt_install,python3-venv); }
	[ -x $(MLSERVER_VENV)/bin/python ] || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install -q -r tests/integration/requirements.txt
	@touch $@

# A package counts as present if its command is on PATH or dpkg has it installed.
deps:
	@missing=""; \
	for entry in $(APT_PACKAGES); do \
	    p="$${entry%%:*}"; cmd="$${entry#*:}"; \
	    command -v "$$cmd" >/dev/null \
	        || dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'ok installed' \
	        || missing="$${missing:+$$missing }$$p"; \
	done; \
	if [ -n "$$missing" ]; then $(call apt_install,$$missing); fi

lint: $(VENV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Lint runs first: it is fast and needs no Debian packages. Two xdist workers, each given whole
# files (module fixtures stay in one process): the tests mostly wait, so two overlap well even on a
# 2-core machine. Each worker hands out its own ports (tests/helpers.py free_port).
test: $(VENV) lint deps native
	$(PY) -m pytest -q -n 2 --dist loadfile

# Real MLServer instances behind a real router (tests/integration, skipped by `make test`).
test-integration: $(VENV) mlserver-env native
	$(PY) -m pytest -q -o addopts="" -p no:cacheprovider tests/integration

bench: $(VENV) deps native
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/scale.py
	@if [ -f bench/decisions.py ]; then echo "$(PY) bench/decisions.py"; $(PY) bench/decisions.py; fi

demo: $(VENV) native
	$(PY) -m examples.demo

clean:
	rm -rf bench/out .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	find router -name '*.so' -delete

distclean: clean
	rm -rf $(VENV) $(MLSERVER_VENV)
