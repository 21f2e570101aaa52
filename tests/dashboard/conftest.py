"""Dashboard fixtures: a workspace of two finished tiny runs, a registry and a request log, served in-process.

The runs are the conftest's random 2-layer Llama trained for 12 steps through the CLI (a few
seconds each); the server is the real app (serve/app.py) with the dashboard mounted at `/`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import apply_overrides, chat_records, write_jsonl
from tests.serve.conftest import Live, free_port, server_thread

QUICK = {"train.max_steps": 12, "eval.every_steps": 4, "eval.general_check": False, "eval.max_new_tokens": 8,
         "checkpoint.every_steps": 100}


@dataclass
class Workspace:
    root: Path
    runs: Path  # the runs root
    registry: Path
    log_db: Path
    data: Path  # training data of the runs
    validation: Path


@pytest.fixture(scope="module")
def module_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_run(workspace: Workspace, model: Path, name: str, **overrides) -> Path:
    from tuneforge.cli import main

    raw = {
        "model": {"name": str(model)}, "data": {"train": str(workspace.data), "validation": str(workspace.validation)},
        "method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "train": {"learning_rate": 1e-2, "epochs": 2, "batch_size": 4, "max_seq_length": 128, "log_every": 1},
        "checkpoint": {"every_steps": 3}, "output_dir": str(workspace.runs / name),
    }
    apply_overrides(raw, {**QUICK, **overrides})
    path = workspace.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 0
    return workspace.runs / name


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model, module_thread) -> Iterator[Workspace]:
    """Runs `alpha` (lr 1e-2) and `beta` (lr 3e-2, its gates failed) under RUNS/, nothing registered yet."""
    root = tmp_path_factory.mktemp("dashboard")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNEFORGE_HOME", str(root / "home"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        space = Workspace(root, root / "runs", root / "registry.db", root / "requests.db",
                          write_jsonl(root / "train.jsonl", chat_records(24)),
                          write_jsonl(root / "validation.jsonl", chat_records(30)[24:]))
        train_run(space, tiny_model, "alpha")
        beta = train_run(space, tiny_model, "beta", **{"train.learning_rate": 3e-2})
        gates = beta / "eval" / "validation" / "gates.json"
        gates.parent.mkdir(parents=True, exist_ok=True)
        gates.write_text(json.dumps({"passed": False, "gates": [
            {"gate": "exact_match >= 0.9", "value": 0.1, "threshold": 0.9, "passed": False,
             "reason": "exact_match 0.1 < 0.9"}]}))
        yield space


@contextmanager
def serving(workspace: Workspace, tiny_model: Path, **options) -> Iterator[Live]:
    """The app with the dashboard over `workspace`, serving the tiny model and run alpha's adapter as `alpha`."""
    from tuneforge.dashboard.settings import DashboardSettings
    from tuneforge.serve.app import create_app
    from tuneforge.serve.options import ServeOptions
    from tuneforge.serve.served import load_served

    served = load_served(str(tiny_model), [("alpha", str(workspace.runs / "alpha"))])
    settings = ServeOptions(port=free_port(), log_db=workspace.log_db, **options)
    app = create_app(served, settings, dashboard=DashboardSettings(runs_root=workspace.runs,
                                                                   registry=workspace.registry))
    with server_thread(app, settings.port, log_level="warning", timeout_graceful_shutdown=10) as (server, thread):
        yield Live(f"http://127.0.0.1:{settings.port}", server, thread, app.state.server)


@pytest.fixture(scope="module")
def board(workspace, tiny_model) -> Iterator[Live]:
    with serving(workspace, tiny_model) as live:
        yield live
