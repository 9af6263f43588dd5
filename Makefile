# The README's two commands. Both do all set-up: the venv is (re)built when it is missing
# or older than pyproject.toml.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.lifeloop-installed
# `pip install lifeloop` with no extras, as an app developer installs it: the tests run its
# client and commands against a real server (tests/integration/test_client_install.py).
CLIENT_VENV := .venv-client
CLIENT_STAMP := $(CLIENT_VENV)/.lifeloop-installed

.PHONY: demo test lint venv client-venv clean

$(STAMP): pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

$(CLIENT_STAMP): pyproject.toml
	rm -rf $(CLIENT_VENV)
	$(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CLIENT_VENV)/bin/python -m pip install --quiet .
	touch $(CLIENT_STAMP)

venv: $(STAMP)

# The dependencies install once; lifeloop itself again every time, from today's source.
client-venv: $(CLIENT_STAMP)
	$(CLIENT_VENV)/bin/python -m pip install --quiet --no-deps --force-reinstall .

demo: $(STAMP)
	$(VENV)/bin/lifeloop demo --out runs/demo

test: $(STAMP) client-venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(CLIENT_VENV) runs build src/*.egg-info
