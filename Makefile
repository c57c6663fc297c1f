# `make demo` and `make test` work on a fresh clone: they build .venv once and reuse it
# while pyproject.toml and the distribution manifests stay unchanged.
# `make demo` installs only what the demo needs (core + torch + the embedded extractor: the
# `demo` extra); `make test` (`make venv`) adds everything else. Both use one .venv.
# TORCH_INDEX=https://download.pytorch.org/whl/cpu installs the CPU-only torch build (no CUDA
# libraries, about 4 GiB less).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HASH := $(shell cat pyproject.toml requirements-lock.txt slideflow_gpl/pyproject.toml slideflow_noncommercial/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
STAMP := $(VENV)/.stamp-$(HASH)
DEMO_STAMP := $(VENV)/.demo-stamp-$(HASH)
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

.PHONY: demo demo-venv test venv lint bench clean-venv

venv: $(STAMP)

$(STAMP):
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_INDEX) -r requirements-lock.txt
	$(BIN)/python -m pip install -q $(PIP_INDEX) -c requirements-lock.txt -e ".[all,gcs,dev,tf]"
# cuCIM backend, CPU reading only (so its tests run in CI): the wheel plus its two
# pure-Python imports; cupy and the nvidia-* libraries it lists are needed only on GPU
# hosts, where `pip install slideflow[cucim]` installs them
	$(BIN)/python -m pip install -q --no-deps cucim-cu13==26.10.0 lazy_loader click
	@for d in slideflow_gpl slideflow_noncommercial; do \
	  if [ -f $$d/pyproject.toml ]; then $(BIN)/python -m pip install -q --no-deps -e ./$$d || exit 1; fi; done
	@rm -f $(VENV)/.stamp-*
	@touch $@

demo-venv: $(DEMO_STAMP)

# the full environment (make venv / make test) already holds everything the demo needs
$(DEMO_STAMP):
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@if [ ! -e $(STAMP) ]; then \
	  $(BIN)/python -m pip install -q --upgrade pip && \
	  $(BIN)/python -m pip install -q $(PIP_INDEX) -c requirements-lock.txt -e ".[demo]" \
	  || exit 1; fi
	@rm -f $(VENV)/.demo-stamp-*
	@touch $@

demo: demo-venv
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
