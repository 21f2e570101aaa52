"""Classifier fixtures: a tiny random BERT (the tiny Llama is tests/conftest.py's), keyword data, run files.

The data is a task a 2-layer model with hidden size 32 learns in a few dozen steps: each class
has its own words, mixed with words every class shares.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from tests.conftest import apply_overrides, write_jsonl

WORDS = {
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"],
    "tool": ["hammer", "wrench", "drill", "saw", "chisel", "pliers", "ladder", "shovel"],
    "weather": ["rain", "snow", "storm", "cloud", "wind", "sunny", "fog", "thunder"],
}
SHARED = ["the", "a", "today", "please", "my", "some", "with", "and", "very", "again"]


def keyword_records(n: int, seed: int, multi: bool = False) -> list[dict]:
    rng = random.Random(seed)
    classes = sorted(WORDS)
    records = []
    for i in range(n):
        if multi:
            chosen = sorted(rng.sample(classes, rng.choice([1, 1, 2])))
        else:
            chosen = [classes[i % len(classes)]]
        words = [rng.choice(WORDS[c]) for c in chosen for _ in range(2)] + rng.sample(SHARED, 3)
        rng.shuffle(words)
        records.append({"text": f"{i} " + " ".join(words), "label": chosen if multi else chosen[0]})
    return records


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, chatml_tokenizer) -> Path:
    """A saved random 2-layer BERT (hidden 32) with the test tokenizer; it has no classification head."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), chatml_tokenizer)


def save_tiny_bert(path: Path, tokenizer) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_config(directory: Path, model: Path, multi: bool = False, **overrides) -> Path:
    """A classify run file for MODEL over keyword data in DIRECTORY; keyword overrides are dotted keys."""
    directory.mkdir(parents=True, exist_ok=True)
    train = write_jsonl(directory / "train.jsonl", keyword_records(60, seed=1, multi=multi))
    test = write_jsonl(directory / "test.jsonl", keyword_records(15, seed=2, multi=multi))
    raw = {
        "task": "classify",
        "model": {"name": str(model)},
        "data": {"train": str(train), "test": str(test), "val_split": 0.2},
        "method": "full",
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"learning_rate": 3e-3, "epochs": 8, "batch_size": 8, "max_seq_length": 32, "log_every": 1,
                  "lr_scheduler": "constant"},
        "output_dir": str(directory / "run"),
    }
    apply_overrides(raw, overrides)
    path = directory / "classify.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def classify_config(tmp_path):
    def write(model: Path, multi: bool = False, **overrides) -> Path:
        return write_config(tmp_path, model, multi, **overrides)

    return write


@pytest.fixture(scope="session")
def trained_bert(tmp_path_factory, tiny_bert):
    """A finished classify run (tiny BERT, full fine-tune, 3 keyword classes), shared by the read-only tests."""
    import torch
    from rich.console import Console

    from tuneforge.train.driver import train as train_classifier
    from tuneforge.config import load_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = write_config(tmp_path_factory.mktemp("trained-bert"), tiny_bert)
        result = train_classifier(load_config(path), console=Console(quiet=True))
    finally:
        torch.set_num_threads(threads)
    return result
