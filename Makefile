# Two commands do all the set-up: `make train` (the quickstart) and `make test` (the suite).
# Each creates .venv when missing and installs the pinned requirements and the package (editable).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.paw-installed

.PHONY: train train-grpo test install clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/paw fit --config configs/quickstart.yaml

train-grpo: $(STAMP)
	$(BIN)/paw fit --config configs/quickstart_grpo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .pytest_cache
