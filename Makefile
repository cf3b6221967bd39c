# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
DEMO_OUT ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint clean

# Create the venv; take the local CPU build of torch first when the machine has one
# (pip's find-links; its own dependencies come with the package install), so that the
# range in pyproject.toml installs nothing bigger.
$(PY):
	python3 -m venv $(VENV)
	@if $(PIP) install -q --no-index --no-deps torch==2.13.0 2>/dev/null; then \
		echo "installed the local CPU build of torch 2.13.0"; \
	else \
		echo "no local torch build found; pip will resolve torch from pyproject.toml"; \
	fi

$(VENV)/.installed: $(PY) pyproject.toml
	$(PIP) install -q -e ".[demo]"
	touch $@

$(VENV)/.installed-dev: $(PY) pyproject.toml
	$(PIP) install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m mtlkit demo $(if $(DEMO_OUT),--out $(DEMO_OUT))

test: lint
	$(PY) -m pytest

# Lint, format and type checks (part of `make test`, so CI runs them).
lint: $(VENV)/.installed-dev
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build src/*.egg-info
