"""GRPO (task: grpo): a tiny model learns a toy reward through the real method; advantages and loss by hand;
TRL-style rewards used unchanged; bad rewards fail naming the reward and the prompt."""

from __future__ import annotations

import json
import pytest
import torch
import yaml

from tests.conftest import apply_overrides, write_jsonl
from tuneforge.config import load_config
from tuneforge.errors import RewardError
from tuneforge.train.policy_loss import clipped_objective, group_advantages


def even_tokens(prompts, completions, completion_ids, **kwargs):
    """A TRL-style reward: the share of the answer's tokens whose id is even (the toy task)."""
    return [sum(t % 2 == 0 for t in ids) / max(len(ids), 1) for ids in completion_ids]  # an empty answer: 0


def prompt_rows(n: int) -> list[dict]:
    return [{"prompt": f"Say something about the number {i}.", "answer": str(i)} for i in range(n)]


@pytest.fixture
def grpo_config(tmp_path, tiny_model):
    def write(**overrides):
        raw = {
            "task": "grpo",
            "model": {"name": str(tiny_model)},
            "data": {"train": str(write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(16))),
                     "validation": str(write_jsonl(tmp_path / "heldout.jsonl", prompt_rows(20)[16:]))},
            "method": "full",
            # 1e-2: the rollouts sample the policy's whole distribution over the tiny vocabulary (no top-k)
            "train": {"learning_rate": 1e-2, "max_steps": 12, "batch_size": 2, "lr_scheduler": "constant",
                      "max_seq_length": 128, "seed": 0},
            "grpo": {"num_generations": 8, "max_new_tokens": 8, "temperature": 1.0},
            "rewards": [{"function": f"{__file__}:even_tokens"}],
            "eval": {"general_check": False},
            "checkpoint": {"every_steps": 100},
            "output_dir": str(tmp_path / "run"),
        }
        apply_overrides(raw, overrides)
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_config(path)

    return write


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_tiny_model_learns_a_toy_reward(grpo_config, tmp_path, one_thread, capsys):
    from tuneforge.cli import main

    config = grpo_config()  # written to tmp_path/run.yaml; trained through the CLI
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    assert "held-out mean reward: before" in capsys.readouterr().err
    run_dir = config.output_dir
    assert (run_dir / "reward_curves.png").is_file() and (run_dir / "eval" / "heldout_tuned.jsonl").is_file()
    rewards = [r["train_reward"] for r in metrics(run_dir) if "train_reward" in r]
    assert len(rewards) == 12
    print("train_reward per step:", [round(r, 3) for r in rewards])
    assert sum(rewards[-3:]) / 3 >= sum(rewards[:3]) / 3 + 0.2, rewards
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert "held-out mean reward" in summary and "held-out pass rate" in summary
    logged = metrics(run_dir)[1]
    for key in ("train_reward_std", "train_reward_even_tokens", "train_no_signal_groups", "train_completion_length",
                "train_clip_fraction"):
        assert key in logged


def test_several_updates_per_generation_and_kl_to_the_adapter_off(grpo_config, one_thread):
    from tuneforge.train.driver import train

    config = grpo_config(**{"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                            "grpo.num_iterations": 2, "grpo.beta": 0.1, "train.max_steps": 4})
    generated = []
    from tuneforge.train.methods import grpo

    real = grpo.GRPOMethod.rollout

    def counting(self, units):
        generated.append(tuple(units))
        return real(self, units)

    grpo.GRPOMethod.rollout = counting
    try:
        result = train(config)
    finally:
        grpo.GRPOMethod.rollout = real
    assert len(generated) == 2  # 4 updates, 2 per generated batch
    rows = [r for r in metrics(result.run_dir) if "train_kl" in r]
    assert rows[0]["train_kl"] == pytest.approx(0.0, abs=1e-6)  # the first update starts at the reference
    assert rows[1]["train_kl"] > 0  # the second: one update away from it
    assert rows[0]["train_clip_fraction"] == 0.0


def test_lora_over_a_bf16_base_generates_with_the_packed_base_and_trains_the_original(grpo_config, one_thread,
                                                                                     monkeypatch):
    from tuneforge.models.packed import can_pack
    from tuneforge.train.driver import train
    from tuneforge.train.methods import grpo

    if not can_pack(torch.device("cpu")):
        pytest.skip("this CPU has no native bf16: nothing is packed")
    made, swapped = [], []
    real_pack, real_sample = grpo.pack_frozen_base, grpo.sample_groups

    def pack(model):
        made.append(real_pack(model))
        return made[-1]

    def sample(model, *args, **kwargs):  # during a rollout the packed layers are in place
        swapped.append(all(getattr(s.parent, s.name) is s.packed for s in made[0].swaps))
        return real_sample(model, *args, **kwargs)

    monkeypatch.setattr(grpo, "pack_frozen_base", pack)
    monkeypatch.setattr(grpo, "sample_groups", sample)
    config = grpo_config(**{"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "model.dtype": "bfloat16",
                            "train.max_steps": 2})
    train(config)
    assert len(made) == 1 and made[0] is not None and swapped == [True, True]  # packed once, used every rollout
    assert all(getattr(s.parent, s.name) is s.original for s in made[0].swaps)  # and put back


def test_advantages_and_loss_of_a_fixed_group_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    advantages, no_signal = group_advantages(rewards, scale=True)
    std = (sum((x - 0.5) ** 2 for x in [1, 0, 0, 1]) / 3) ** 0.5  # unbiased: 0.57735
    a = 0.5 / (std + 1e-4)
    assert advantages[0].tolist() == pytest.approx([a, -a, -a, a])
    assert advantages[1].tolist() == [0.0] * 4
    assert no_signal.tolist() == [False, True]
    unscaled, _ = group_advantages(rewards, scale=False)
    assert unscaled[0].tolist() == [0.5, -0.5, -0.5, 0.5]

    # three answer tokens: ratios e^0.1 (clipped above for A>0), e^-0.5 (clipped below for A<0), 1
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    old = torch.tensor([-1.1, -1.5, -0.5])
    ref = torch.tensor([-1.2, -2.0, -0.4])
    adv = torch.tensor([2.0, -1.0, 0.5])
    parts = clipped_objective(logp, old, adv, epsilon=0.05, ref_logp=ref)
    import math

    r = [math.exp(0.1), math.exp(-0.5), 1.0]
    token = [-min(r[0] * 2.0, 1.05 * 2.0), -min(r[1] * -1.0, 0.95 * -1.0), -min(1.0 * 0.5, 1.0 * 0.5)]
    assert parts.policy.item() == pytest.approx(sum(token), rel=1e-6)
    k3 = [math.exp(d) - d - 1 for d in (-0.2, 0.0, 0.1)]
    assert parts.kl.item() == pytest.approx(sum(k3), rel=1e-5)  # float32 cancellation in e^d - d - 1
    assert parts.clipped == 2.0
    parts.policy.backward()
    # clipped tokens carry no gradient; the unclipped one: d(-r*A)/dlogp = -r*A
    assert logp.grad.tolist() == pytest.approx([0.0, 0.0, -0.5])


def test_a_reward_returning_the_wrong_length_fails_naming_it_and_the_prompt(grpo_config, tmp_path, one_thread):
    from tuneforge.train.driver import train

    (tmp_path / "bad.py").write_text("def short(prompts, completions, **kw):\n    return [1.0]\n"
                                     "def words(prompts, completions, **kw):\n    return ['good'] * len(prompts)\n"
                                     "def boom(prompts, completions, **kw):\n    raise ValueError('no luck')\n"
                                     "def slow(prompts, completions, **kw):\n    import time; time.sleep(5)\n")
    cases = {"short": "returned 1 scores for 16 answers", "words": "returned 'good', not a number",
             "boom": "raised ValueError: no luck", "slow": "took longer than grpo.reward_timeout_s"}
    for name, message in cases.items():
        config = grpo_config(**{"rewards": [{"function": f"{tmp_path / 'bad.py'}:{name}"}], "train.max_steps": 1,
                                "grpo.reward_timeout_s": 0.5, "data.validation": []})
        with pytest.raises(RewardError) as error:
            train(config, overwrite=True)
        assert f"reward {name} " in str(error.value) and message in str(error.value)
        assert "Say something about the number" in str(error.value)


def test_a_trl_reward_function_is_called_unchanged_with_the_dataset_columns():
    from tuneforge.evaluate.rewards import load_rewards, score
    from tuneforge.config.rewards import RewardConfig

    seen = {}

    def trl_style(prompts, completions, answer, **kwargs):  # as written for TRL's GRPOTrainer
        seen.update(prompts=prompts, completions=completions, answer=answer, kwargs=kwargs)
        return [1.0 if c[0]["content"].strip() == a else 0.0 for c, a in zip(completions, answer)]

    import sys
    import types

    module = types.ModuleType("trl_rewards_for_test")
    module.trl_style = trl_style
    sys.modules["trl_rewards_for_test"] = module
    rewards = load_rewards([RewardConfig(function="trl_rewards_for_test:trl_style")])
    rows = [{"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"}] * 2
    scores = score(rewards, rows, ["4", "5"], [[1], [2]], timeout_s=5)
    assert scores.total == [1.0, 0.0]
    assert seen["completions"] == [[{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]]
    assert seen["answer"] == ["4", "4"] and seen["kwargs"]["completion_ids"] == [[1], [2]]


def test_the_run_file_checks_grpo_settings(grpo_config):
    from tuneforge.errors import ConfigError

    assert grpo_config().eval.best_metric == "reward"
    with pytest.raises(ConfigError, match="rewards"):
        grpo_config(rewards=[])
    with pytest.raises(ConfigError, match="grpo.beta: needs method: lora"):
        grpo_config(**{"grpo.beta": 0.1})
    with pytest.raises(ConfigError, match="not_a_key"):
        grpo_config(**{"grpo.not_a_key": 1})
