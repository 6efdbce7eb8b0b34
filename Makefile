# Everything a fresh machine needs: `make demo` runs the pipeline, `make test` the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test demo lint bench services clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

services:
	bash .ci/services

test: $(STAMP) services
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy config models pipelines workers cli airlock_sdk bench web

demo: $(STAMP)
	rm -rf var/demo
	AIRLOCK_HOME=var/demo $(BIN)/airlock demo --devices 24

bench: $(STAMP) services
	$(BIN)/airlock bench --files 20000 --json bench-out.json

clean:
	rm -rf var .pytest_cache .ruff_cache
