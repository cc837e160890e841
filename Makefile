# AI Factory Lab: `make up` starts the platform, `make test` proves it.
# Everything is installed from scratch on a new machine; stamps make re-runs quick.

VENV        ?= .venv
# Debian's interpreter: jobs run as other Unix users, who cannot read a pyenv under /root.
SYS_PYTHON  ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
TORCH       ?= torch==2.13.0
CHP_VERSION ?= 5
STATE_DIR   ?=
PORT        ?= 8000
PYTEST_ARGS ?=

SYSTEM_PACKAGES := slurmctld slurmd slurm-client munge postgresql chromium fonts-dejavu-core git

.PHONY: up test perf faults install sysdeps clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@test -d $(VENV) || $(SYS_PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e '.[torch,test]'
	@# configurable-http-proxy into a project-local prefix, never globally
	npm install --silent --no-save --prefix $(VENV)/node configurable-http-proxy@$(CHP_VERSION)
	touch $@

# System packages the tests use (Slurm, munge, PostgreSQL, Chromium); needs root.
sysdeps: $(VENV)/.sysdeps

$(VENV)/.sysdeps: Makefile
	@if [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES); \
	  systemctl disable --now slurmctld slurmd munge >/dev/null 2>&1 || true; \
	else echo "sysdeps: not root, skipping system packages (Slurm and browser tests will skip)"; fi
	@mkdir -p $(VENV) && touch $@

up: install
	$(VENV)/bin/aif up $(if $(STATE_DIR),--state-dir $(STATE_DIR)) --port $(PORT)

test: install sysdeps
	$(PY) -m pytest $(PYTEST_ARGS)

perf: install sysdeps
	$(PY) perf/run_all.py

faults: install sysdeps
	$(PY) -m pytest -m faults perf/faults

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
