"""Training fixtures: a plain-text "domain" corpus and a pretrain run file over it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import apply_overrides, write_jsonl

# A small "domain": sentences built from a closed vocabulary, so a tiny model can learn its statistics.
SUBJECTS = ["the keeper", "a worker bee", "the queen", "each colony", "the smoker", "a drone"]
VERBS = ["checks", "warms", "feeds", "guards", "opens", "cleans"]
OBJECTS = ["the brood frame", "the honey super", "the hive entrance", "the wax comb", "the queen cell"]


def domain_text(seed: int, sentences: int) -> str:
    g = torch.Generator().manual_seed(seed)
    pick = lambda items: items[int(torch.randint(len(items), (1,), generator=g))]  # noqa: E731
    return " ".join(f"{pick(SUBJECTS).capitalize()} {pick(VERBS)} {pick(OBJECTS)}." for _ in range(sentences))


@pytest.fixture
def pretrain_config(tmp_path, tiny_model):
    def write(**overrides) -> Path:
        train_file = write_jsonl(tmp_path / "corpus.jsonl", [{"text": domain_text(i, 30)} for i in range(6)])
        held_out = write_jsonl(tmp_path / "held_out.jsonl", [{"text": domain_text(100 + i, 12)} for i in range(3)])
        raw = {
            "task": "pretrain",
            "model": {"name": str(tiny_model)},
            "data": {"train": str(train_file), "validation": str(held_out)},
            "method": "full",
            "train": {"learning_rate": 3e-3, "epochs": 3, "batch_size": 4, "max_seq_length": 64, "log_every": 1,
                      "lr_scheduler": "constant", "preflight": "off"},
            "eval": {"general_check": False},
            "checkpoint": {"every_steps": 100},
            "output_dir": str(tmp_path / "run"),
        }
        apply_overrides(raw, overrides)
        path = tmp_path / "pretrain.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


