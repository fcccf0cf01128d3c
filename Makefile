# Everything a fresh machine needs beyond python3 and make is installed by these targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CODE   := pilot checks server_stub

.PHONY: venv demo test lint unit system-deps bench binary clean

$(VENV)/.installed: pyproject.toml tests/plugins/sample_vo_plugin/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev,build]' -e tests/plugins/sample_vo_plugin
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/python examples/demo.py

system-deps:
	bash scripts/system-deps.sh

lint: venv
	$(BIN)/mypy --strict $(CODE)
	$(BIN)/ruff check $(CODE) tests bench examples
	$(BIN)/ruff format --check $(CODE)

unit: venv
	$(BIN)/python -m pytest -q

test: venv system-deps lint unit

bench: venv
	$(BIN)/python bench/job_overhead.py
	$(BIN)/python bench/sandbox.py

clean:
	rm -rf $(VENV) dist build/work .pytest_cache .mypy_cache .ruff_cache

# One-file dist/pilot (see build/README.md). As root it is built inside a Debian bullseye
# tree made under build/cache/ on first use (debootstrap + a CPython compile, minutes, once).
binary: venv
	$(BIN)/python build/build.py

# The pristine bullseye minbase tree that tests/test_binary.py runs dist/pilot in.
.PHONY: rootfs
rootfs:
	$(PYTHON) build/rootfs.py minbase
