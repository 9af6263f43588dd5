# The README's two commands. Both do all set-up: the venv is (re)built when it is missing
# or older than pyproject.toml.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.lifeloop-installed

.PHONY: demo test lint venv clean

$(STAMP): pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lifeloop demo --out runs/demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs build src/*.egg-info
