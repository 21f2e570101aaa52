"""Per-step losses of every training method pinned on tiny models (torchtune's habit).

The numbers were recorded with the code before the step driver (issue 17) replaced the two
training loops (the chat loop and the classifier's), on a tokenizer trained on three example folders (tests/conftest.py: CORPUS_FOLDERS); a refactor of the engine must reproduce them, so any change in batch order,
accumulation, loss composition or the optimizer shows here as a number that moved.  Each case
trains a few steps on one thread (deterministic) and compares every logged train_loss and
eval_loss.  If a change is *meant* to alter the numbers, re-record them and say why in the commit.
"""

from __future__ import annotations

import os

import pytest

from tuneforge.config import load_config
from tuneforge.train.driver import train
from tuneforge.evaluate.run_metrics import read_metrics

from tests.classify.conftest import tiny_bert  # noqa: F401  (a fixture)
from tests.classify.conftest import write_config as write_classify_config
from tests.conftest import chat_records, write_jsonl

CHAT = {"train.max_steps": 4, "train.grad_accum": 2, "train.preflight": "off", "eval.general_check": False,
        "eval.every_steps": 2, "checkpoint.every_steps": 100}

PINNED = {
    'classify_full': [(0, 'eval_loss', 1.096382), (1, 'train_loss', 1.095427), (2, 'train_loss', 1.092133), (2, 'eval_loss', 1.099982), (3, 'train_loss', 1.140814), (4, 'train_loss', 1.108943), (4, 'eval_loss', 1.10295), (5, 'train_loss', 1.087426), (5, 'eval_loss', 1.104743)],
    'classify_lora': [(0, 'eval_loss', 1.096382), (1, 'train_loss', 1.096564), (2, 'train_loss', 1.093875), (2, 'eval_loss', 1.095927), (3, 'train_loss', 1.119273), (4, 'train_loss', 1.104799), (4, 'eval_loss', 1.096584), (5, 'train_loss', 1.093578), (5, 'eval_loss', 1.09695)],
    'pretrain_full': [(0, 'eval_loss', 6.40465), (1, 'train_loss', 6.399577), (2, 'train_loss', 6.085743), (2, 'eval_loss', 5.822894), (3, 'train_loss', 5.813547), (4, 'train_loss', 5.569692), (4, 'eval_loss', 5.338097)],
    'sft_full_packed': [(0, 'eval_loss', 6.438843), (1, 'train_loss', 6.419526), (2, 'train_loss', 6.211598), (2, 'eval_loss', 6.111267), (3, 'train_loss', 6.075572), (4, 'train_loss', 6.026333), (4, 'eval_loss', 6.021771)],
    'sft_lora': [(0, 'eval_loss', 6.438752), (1, 'train_loss', 6.385725), (2, 'train_loss', 6.324154), (2, 'eval_loss', 6.262764), (3, 'train_loss', 6.25452), (4, 'train_loss', 6.186491), (4, 'eval_loss', 6.204772)],
    'sft_lora_replay_kl': [(0, 'eval_loss', 6.438752), (1, 'train_loss', 6.374881), (1, 'train_kl_to_base', 0.0), (2, 'train_loss', 6.34549), (2, 'train_kl_to_base', 0.00024), (2, 'eval_loss', 6.260382), (3, 'train_loss', 6.232332), (3, 'train_kl_to_base', 0.0), (4, 'train_loss', 6.167096), (4, 'train_kl_to_base', 0.008598), (4, 'eval_loss', 6.198739)],
}


def logged(run_dir) -> list[tuple[int, str, float]]:
    return [(r["step"], key, r[key]) for r in read_metrics(run_dir) for key in ("train_loss", "train_kl_to_base",
                                                                                "eval_loss") if key in r]


def run_case(name: str, tmp_path, run_config, tiny_model, tiny_bert, pretrain_config) -> list[tuple[int, str, float]]:
    if name == "sft_lora":
        path = run_config(**CHAT)
    elif name == "sft_full_packed":
        path = run_config(method="full", **CHAT, **{"data.packing": True, "train.learning_rate": 1e-3})
    elif name == "sft_lora_replay_kl":
        general = write_jsonl(tmp_path / "general.jsonl", chat_records(40)[30:])
        path = run_config(**CHAT, **{"data.replay": {"ratio": 0.3, "data": [str(general)]}, "train.kl_to_base": 0.5})
    elif name == "pretrain_full":
        path = pretrain_config(**{"train.max_steps": 4, "eval.every_steps": 2})
    else:
        method = name.removeprefix("classify_")
        path = write_classify_config(tmp_path / "classify", tiny_bert, method=method,
                                     **{"train.max_steps": 5, "eval.every_steps": 2, "train.grad_accum": 2})
    config = load_config(path)
    train(config)
    return logged(config.output_dir)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_per_step_losses_match_the_pinned_values(name, tmp_path, run_config, tiny_model, tiny_bert, pretrain_config,
                                                  one_thread):
    got = run_case(name, tmp_path, run_config, tiny_model, tiny_bert, pretrain_config)
    if os.environ.get("TUNEFORGE_RECORD_PINNED"):
        print(f"PINNED {name!r}: {[(s, k, round(v, 6)) for s, k, v in got]!r},")
        return
    expected = PINNED[name]
    assert [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in expected]
    for (step, key, value), (_, _, pinned) in zip(got, expected):
        assert value == pytest.approx(pinned, abs=2e-5), f"{name}: {key} at step {step}"
