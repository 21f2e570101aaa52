"""Finished tiny runs to register: the conftest's random 2-layer Llama, trained for a few steps (about a second)."""

from pathlib import Path

import pytest

from tuneforge.cli import main

QUICK = {"train.max_steps": 3, "eval.general_check": False, "eval.max_new_tokens": 8, "checkpoint.every_steps": 100}


@pytest.fixture
def finished_run(run_config, tmp_path, one_thread):
    """finished_run(name, **dotted overrides) -> the run directory of a LoRA run trained through the CLI."""

    def make(name: str = "run", **overrides) -> Path:
        path = run_config(**{**QUICK, "output_dir": str(tmp_path / name), **overrides})
        assert main(["train", str(path)]) == 0
        return tmp_path / name

    return make


@pytest.fixture
def wide_terminal(monkeypatch):
    """Rich tables as wide as their content, so printed rows can be checked whole."""
    monkeypatch.setenv("COLUMNS", "250")
