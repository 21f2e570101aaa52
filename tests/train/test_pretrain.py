"""task: pretrain — plain text, every token trained, long documents cut into packed blocks, perplexity before/after."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from tuneforge.cli import main
from tuneforge.config import load_config
from tuneforge.data.packing import split_blocks
from tuneforge.data.template import TokenizedExample
from tuneforge.errors import ConfigError, DataError
from tuneforge.train.driver import train

from tests.conftest import apply_overrides, chat_records, write_jsonl
from tests.train.conftest import domain_text

def test_split_blocks_keeps_every_token_in_order():
    tokens = TokenizedExample(list(range(10)), list(range(10)))
    blocks = split_blocks(tokens, 4)
    assert [b.input_ids for b in blocks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [b.labels for b in blocks] == [b.input_ids for b in blocks]
    with pytest.raises(ValueError):
        split_blocks(tokens, 1)


def test_config_defaults_and_refusals(pretrain_config):
    config = load_config(pretrain_config())
    assert config.task == "pretrain" and config.data.packing and config.data.split_long_texts
    assert not load_config(pretrain_config(**{"data.packing": False})).data.packing  # an explicit choice stands
    refusals = {
        "data.format": ("chat", r"pretrain.yaml:\d+: data.format: must be auto or text"),
        "eval.best_metric": ("exact_match", "eval.best_metric: must be one of eval_loss, eval_perplexity"),
        "data.validation": ([], "data.validation: task: pretrain reports perplexity on held-out text"),
    }
    for key, (value, message) in refusals.items():
        with pytest.raises(ConfigError, match=message):
            load_config(pretrain_config(**{key: value}))


def test_chat_files_are_refused_naming_the_file(pretrain_config, tmp_path):
    chats = write_jsonl(tmp_path / "chats.jsonl", chat_records(4))
    config = load_config(pretrain_config(**{"data.train": str(chats)}))
    with pytest.raises(DataError, match=r"chats\.jsonl: chat records; task: pretrain trains on plain text"):
        train(config)


def test_continued_pretraining_lowers_held_out_perplexity(pretrain_config, capsys):
    path = pretrain_config()
    assert main(["train", str(path)]) == 0
    run_dir = load_config(path).output_dir
    manifest = json.loads((run_dir / "data_manifest.json").read_text())
    # Six documents of ~300 tokens each, cut into 64-token blocks: many more rows than documents.
    assert manifest["train_records"] > 6 * 3
    assert manifest["trained_tokens"] >= manifest["train_tokens"] - manifest["train_records"]  # no masks
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [e["eval_loss"] for e in evals if "eval_loss" in e]
    before, after = losses[0], losses[-1]
    assert after < before - 0.5, losses
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    ppl_before, ppl_after = summary["perplexity on held-out text"]["base"], summary["perplexity on held-out text"]["tuned"]
    assert ppl_before == pytest.approx(math.exp(before)) and ppl_after == pytest.approx(math.exp(after))
    out = capsys.readouterr()
    assert f"held-out perplexity: before {ppl_before:.2f} -> after {ppl_after:.2f}" in out.err + out.out


def test_periodic_evaluation_logs_perplexity_and_picks_the_best_by_it(pretrain_config):
    path = pretrain_config(**{"eval.every_steps": 2, "eval.best_metric": "eval_perplexity", "train.epochs": 1})
    assert main(["train", str(path)]) == 0
    run_dir = load_config(path).output_dir
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    periodic = [e for e in evals if "eval_perplexity" in e]
    assert periodic and all(e["eval_perplexity"] == pytest.approx(math.exp(e["eval_loss"])) for e in periodic)
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert best["metric"] == "eval_perplexity"
