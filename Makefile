# `make demo` and `make test` create the virtual environment on first use.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test,speech,postgres]'
	touch $(STAMP)

$(VENV)/.lint: $(STAMP)
	$(VENV)/bin/pip install -q -e '.[lint]'
	touch $@

$(VENV)/.docs: $(STAMP)
	$(VENV)/bin/pip install -q -e '.[docs]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kdzoo demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# ruff everywhere; the format check and mypy on the public API (kdzoo/api, kdzoo/plugins.py)
lint: $(VENV)/.lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check src/kdzoo/api src/kdzoo/plugins.py src/kdzoo/__init__.py
	$(VENV)/bin/mypy

docs: $(VENV)/.docs
	$(VENV)/bin/python docs/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	@echo "site/index.html"

clean:
	rm -rf runs site .pytest_cache
