# Everything a fresh machine needs beyond python3 and make is installed by these targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CODE   := pilot checks server_stub

.PHONY: venv demo test lint unit system-deps bench binary clean lock

# Caches shared by every checkout on this machine: the bullseye build root and test root
# file system (build/rootfs.py) and the test DIRAC server's virtualenv. They are made once
# (about 9 and 2 minutes) and reused by later runs and clones.
export PILOT_BUILD_CACHE ?= $(HOME)/.cache/pilot-agent/build
export PILOT_DIRAC_VENV ?= $(HOME)/.cache/pilot-agent/dirac-venv

# Exactly the tested versions: requirements/dev.lock (hashes checked, nothing resolved here),
# then the project and the test plugin on top without dependencies or build isolation.
$(VENV)/.installed: requirements/dev.lock pyproject.toml tests/plugins/sample_vo_plugin/pyproject.toml
	@echo "== venv: installing the locked dependencies into $(VENV) (requirements/dev.lock; about a minute the first time)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps --progress-bar off -r requirements/dev.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation \
		-e . -e tests/plugins/sample_vo_plugin
	@echo "== $(VENV) ready"
	$(BIN)/python -m compileall -q pilot checks server_stub  # fast start even where bytecode is not written
	touch $@

venv: $(VENV)/.installed

# Re-resolve every lock file from its ranges (pyproject.toml, requirements/*.in), keeping
# the locked versions where they still fit; UPGRADE=1 takes the newest in range. The only
# way the versions that make venv, make binary and the DIRAC test server install change.
lock: venv
	$(BIN)/python scripts/lock.py $(if $(UPGRADE),--upgrade)

demo: venv
	@echo "== demo: a matcher stub, two jobs, one pilot"
	$(BIN)/python examples/demo.py

system-deps:
	@echo "== system packages for the system tests (as root; skipped otherwise)"
	bash scripts/system-deps.sh

lint: venv
	$(BIN)/mypy --strict $(CODE)
	$(BIN)/ruff check $(CODE) tests testbed bench examples scripts
	$(BIN)/ruff format --check $(CODE)

unit: venv
	$(BIN)/python -m compileall -q pilot checks server_stub  # sources edited since install
	@echo "== pytest: the whole suite (first run also builds caches, see README)"
	$(BIN)/python scripts/run_suite.py  # the fault tests, mostly waiting, beside the rest

test: venv system-deps lint unit

bench: venv
	$(BIN)/python -m compileall -q pilot checks server_stub
	$(BIN)/python bench/job_overhead.py
	$(BIN)/python bench/sandbox.py
	$(BIN)/python bench/supervision.py
	$(BIN)/python bench/monitor.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/kill_poll.py
	$(BIN)/python bench/matcher.py
	$(MAKE) binary
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/dirac_first_match.py

clean:
	rm -rf $(VENV) dist build/work .pytest_cache .mypy_cache .ruff_cache

# One-file dist/pilot (see build/README.md). As root it is built inside a Debian bullseye
# tree made under $(PILOT_BUILD_CACHE) on first use (debootstrap + a CPython compile, minutes, once).
binary: venv
	$(BIN)/python build/build.py

# The pristine bullseye minbase tree that tests/test_binary.py runs dist/pilot in.
.PHONY: rootfs
rootfs:
	$(PYTHON) build/rootfs.py minbase
