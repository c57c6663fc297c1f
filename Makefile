# `make demo` and `make test` work on a fresh clone: they build .venv once and reuse it
# while pyproject.toml and the distribution manifests stay unchanged.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml requirements-lock.txt slideflow_gpl/pyproject.toml slideflow_noncommercial/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)

.PHONY: demo test venv lint bench clean-venv

venv: $(STAMP)

$(STAMP):
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-lock.txt
	$(BIN)/python -m pip install -q -e ".[all,dev,tf]"
# cuCIM backend, CPU reading only (so its tests run in CI): the wheel plus its two
# pure-Python imports; cupy and the nvidia-* libraries it lists are needed only on GPU
# hosts, where `pip install slideflow[cucim]` installs them
	$(BIN)/python -m pip install -q --no-deps cucim-cu13==26.10.0 lazy_loader click
	@for d in slideflow_gpl slideflow_noncommercial; do \
	  if [ -f $$d/pyproject.toml ]; then $(BIN)/python -m pip install -q --no-deps -e ./$$d || exit 1; fi; done
	@rm -f $(VENV)/.stamp-*
	@touch $@

demo: venv
	$(BIN)/python -m slideflow.cli.demo

test: venv
	$(BIN)/python -m ruff check slideflow slideflow_gpl slideflow_noncommercial tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -x tests

lint: venv
	$(BIN)/python -m ruff check slideflow slideflow_gpl slideflow_noncommercial tests bench
	$(BIN)/lint-imports

bench: venv
	$(BIN)/python bench/run_all.py

clean-venv:
	rm -rf $(VENV)
