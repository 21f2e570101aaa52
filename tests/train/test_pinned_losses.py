"""Per-step losses of every training method pinned on tiny models (torchtune's habit).

The numbers were recorded with the code before the step driver (issue 17) replaced the two
training loops; a refactor of the engine must reproduce them, so any change in batch order,
accumulation, loss composition or the optimizer shows here as a number that moved.  Each case
trains a few steps on one thread (deterministic) and compares every logged train_loss and
eval_loss.  If a change is *meant* to alter the numbers, re-record them and say why in the commit.
"""

from __future__ import annotations

import os

import pytest

from tuneforge.config import load_config
from tuneforge.train.metrics import read_metrics

from tests.classify.conftest import tiny_bert  # noqa: F401  (a fixture)
from tests.classify.conftest import write_config as write_classify_config
from tests.conftest import chat_records, write_jsonl

CHAT = {"train.max_steps": 4, "train.grad_accum": 2, "train.preflight": "off", "eval.general_check": False,
        "eval.every_steps": 2, "checkpoint.every_steps": 100}

PINNED = {
    'classify_full': [(0, 'eval_loss', 1.096399), (1, 'train_loss', 1.096956), (2, 'train_loss', 1.096277), (2, 'eval_loss', 1.100449), (3, 'train_loss', 1.111625), (4, 'train_loss', 1.089649), (4, 'eval_loss', 1.105311), (5, 'train_loss', 1.101017), (5, 'eval_loss', 1.10768)],
    'classify_lora': [(0, 'eval_loss', 1.096399), (1, 'train_loss', 1.098126), (2, 'train_loss', 1.09637), (2, 'eval_loss', 1.096447), (3, 'train_loss', 1.104085), (4, 'train_loss', 1.097019), (4, 'eval_loss', 1.097289), (5, 'train_loss', 1.096003), (5, 'eval_loss', 1.097659)],
    'pretrain_full': [(0, 'eval_loss', 6.397732), (1, 'train_loss', 6.411328), (2, 'train_loss', 6.127163), (2, 'eval_loss', 5.883786), (3, 'train_loss', 5.8611), (4, 'train_loss', 5.69493), (4, 'eval_loss', 5.439987)],
    'sft_full_packed': [(0, 'eval_loss', 6.461951), (1, 'train_loss', 6.421383), (2, 'train_loss', 6.244968), (2, 'eval_loss', 6.094606), (3, 'train_loss', 6.059902), (4, 'train_loss', 6.020441), (4, 'eval_loss', 5.990836)],
    'sft_lora': [(0, 'eval_loss', 6.462043), (1, 'train_loss', 6.417049), (2, 'train_loss', 6.339355), (2, 'eval_loss', 6.271189), (3, 'train_loss', 6.260058), (4, 'train_loss', 6.195948), (4, 'eval_loss', 6.18108)],
    'sft_lora_replay_kl': [(0, 'eval_loss', 6.462043), (1, 'train_loss', 6.382394), (1, 'train_kl_to_base', 0.0), (2, 'train_loss', 6.371212), (2, 'train_kl_to_base', 0.000136), (2, 'eval_loss', 6.245757), (3, 'train_loss', 6.232302), (3, 'train_kl_to_base', 0.0), (4, 'train_loss', 6.129235), (4, 'train_kl_to_base', 0.007889), (4, 'eval_loss', 6.156449)],
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
    train_any(config)
    return logged(config.output_dir)


def train_any(config) -> None:
    if config.task == "classify":
        from tuneforge.classify.train import train_classifier

        train_classifier(config)
    else:
        from tuneforge.train.loop import train

        train(config)


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
