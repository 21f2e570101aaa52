"""Preference methods (DPO, IPO, ORPO, SimPO, KTO) on a tiny random Llama.

Each loss on a fixed batch equals a hand computation from the model's own logits (plain log-softmax,
no tuneforge code) to 1e-4; LoRA steps leave every base weight bit-identical and change the adapter;
a short DPO run raises the held-out reward accuracy.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tuneforge.config import load_config
from tuneforge.evaluate.run_metrics import read_metrics
from tuneforge.train.driver import train
from tuneforge.train.method import compose

from tests.conftest import write_jsonl


def pair_records(n: int, offset: int = 0) -> list[dict]:
    """Short direct answers preferred to rambling ones."""
    return [{"prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i}.",
             "rejected": f"Well, let me think about {i} plus {i} for a while, it might be {2 * i + 1} or so."}
            for i in range(offset, offset + n)]


def rated_records(n: int, offset: int = 0) -> list[dict]:
    return [{"prompt": f"What is {i} plus {i}?", "completion": f"{2 * i}." if i % 2 else f"Maybe {i}, who knows.",
             "label": bool(i % 2)} for i in range(offset, offset + n)]


@pytest.fixture
def preference_config(tmp_path, tiny_model):
    import yaml

    def write(task: str = "preference", **overrides) -> object:
        records = pair_records if task == "preference" else rated_records
        train_file = write_jsonl(tmp_path / "pairs.jsonl", records(16))
        validation = write_jsonl(tmp_path / "held_out.jsonl", records(8, offset=40))
        raw = {"model": {"name": str(tiny_model)}, "task": task, "method": "lora",
               "data": {"train": str(train_file), "validation": str(validation)},
               "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
               "train": {"learning_rate": 5e-3, "max_steps": 4, "batch_size": 4, "max_seq_length": 96,
                         "preflight": "off"},
               "eval": {"general_check": False, "batch_size": 8},
               "output_dir": str(tmp_path / "run")}
        for key, value in overrides.items():
            node = raw
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_config(path)

    return write


def sequence_logps(model, input_ids, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of the labelled tokens, their count) per row, from the full logits."""
    logits = model(input_ids=input_ids, attention_mask=(labels != -100) | (input_ids != -1)).logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != -100
    picked = torch.log_softmax(logits, -1).gather(2, targets.clamp(min=0).unsqueeze(2)).squeeze(2)
    return (picked * mask).sum(1), mask.sum(1)


def built(config):
    """The method with its data and model, as the driver builds them (no training)."""
    from accelerate import Accelerator
    from rich.console import Console

    from tuneforge.train.methods import method_for

    method = method_for(config).build(config, Accelerator(cpu=True), Console(quiet=True))
    model = method.load(None)
    method.sets = []
    return method, model


def adapter_off_zero(model) -> None:
    """Seeded LoRA B matrices, so the policy differs from its reference (the adapter switched off)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))


def hand_loss(name: str, settings, chosen, rejected, counts, ref_chosen, ref_rejected) -> torch.Tensor:
    n = len(chosen)
    beta, eps = settings.beta, settings.label_smoothing
    out = []
    for i in range(n):
        c, r = chosen[i].item(), rejected[i].item()
        cm, rm = c / counts[i].item(), r / counts[n + i].item()
        if name == "dpo":
            h = beta * ((c - ref_chosen[i].item()) - (r - ref_rejected[i].item()))
            out.append(-(1 - eps) * math.log(1 / (1 + math.exp(-h))) - eps * math.log(1 / (1 + math.exp(h))))
        elif name == "ipo":
            h = (cm - ref_chosen[i].item() / counts[i].item()) - (rm - ref_rejected[i].item() / counts[n + i].item())
            out.append((h - 1 / (2 * beta)) ** 2)
        elif name == "orpo":
            odds = (cm - rm) - (math.log(1 - math.exp(cm)) - math.log(1 - math.exp(rm)))
            out.append(-cm - beta * math.log(1 / (1 + math.exp(-odds))))
        elif name == "simpo":
            h = beta * (cm - rm) - settings.gamma
            out.append(-math.log(1 / (1 + math.exp(-h))))
    return torch.tensor(out).sum()


@pytest.mark.parametrize("loss", ["dpo", "ipo", "orpo", "simpo"])
def test_pair_loss_equals_hand_computation(preference_config, one_thread, loss):
    config = preference_config(**{"preference.loss": loss, "preference.beta": 0.5, "model.dtype": "float32",
                                  "preference.label_smoothing": 0.1 if loss == "dpo" else 0.0})
    method, model = built(config)
    method.before_training(model, resuming=False)
    adapter_off_zero(model)
    batch = method.batch([0, 1, 2])
    result = method.loss_terms(model, batch)
    policy, counts = sequence_logps(model, batch["input_ids"], batch["labels"])
    with model.disable_adapter():
        ref, _ = sequence_logps(model, batch["input_ids"], batch["labels"])
    n = 3
    expected = hand_loss(loss, method.settings, policy[:n], policy[n:], counts, ref[:n], ref[n:])
    assert result.terms["loss"].item() == pytest.approx(expected.item(), abs=1e-4)
    assert result.stats["chosen_logp"] == pytest.approx(policy[:n].sum().item(), abs=1e-4)
    if loss in ("dpo",):
        rewards = 0.5 * ((policy[:n] - ref[:n]) - (policy[n:] - ref[n:]))
        assert result.stats["margin"] == pytest.approx(rewards.sum().item(), abs=1e-4)
        assert result.stats["reward_accuracy"] == float((rewards > 0).sum())


def test_kto_loss_equals_hand_computation(preference_config, one_thread):
    config = preference_config("kto", **{"kto.beta": 0.5, "kto.desirable_weight": 1.0,
                                         "kto.undesirable_weight": 1.5, "model.dtype": "float32"})
    method, model = built(config)
    method.before_training(model, resuming=False)
    adapter_off_zero(model)
    units = [0, 1, 2, 3]
    batch = method.batch(units)
    result = method.loss_terms(model, batch)
    policy, _ = sequence_logps(model, batch["input_ids"], batch["labels"])
    with model.disable_adapter():
        ref, _ = sequence_logps(model, batch["input_ids"], batch["labels"])
    n = len(units)
    z = max(0.0, (policy[n:] - ref[n:]).mean().item())
    total = 0.0
    for i in range(n):
        ratio = policy[i].item() - ref[i].item()
        if batch["desirable"][i]:
            total += 1.0 * (1 - 1 / (1 + math.exp(-0.5 * (ratio - z))))
        else:
            total += 1.5 * (1 - 1 / (1 + math.exp(-0.5 * (z - ratio))))
    assert batch["desirable"].any() and not batch["desirable"].all()
    assert result.terms["loss"].item() == pytest.approx(total, abs=1e-4)
    assert result.stats["kl_estimate"] == pytest.approx(z * n, abs=1e-4)


@pytest.mark.parametrize("task", ["preference", "kto"])
def test_columns_run_apart_give_the_gradients_of_one_forward_over_both(preference_config, one_thread, task):
    """preference_loss.column_logps: recomputing the chosen rows in backward (and running KTO's mismatched rows
    without gradient) changes how often the model runs, not the loss or a single gradient."""
    extra = {"preference.sft_weight": 0.5} if task == "preference" else {}
    config = preference_config(task, **{"model.dtype": "float32", **extra})
    method, model = built(config)
    method.before_training(model, resuming=False)
    adapter_off_zero(model)
    batch = method.batch([0, 1, 2, 3])
    decoder = model.get_decoder()
    calls = []
    handle = decoder.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))

    def gradients(modes):
        model.zero_grad()
        calls.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(type(method.settings), "modes", property(lambda self: modes))
            result = method.loss_terms(model, batch)
            compose(result.terms, method.weights).backward()
        trained = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return result.terms["loss"].item(), trained, list(calls)

    one_pass = gradients(("grad", "grad"))
    apart = gradients(method.settings.modes)
    handle.remove()
    assert apart[0] == pytest.approx(one_pass[0], abs=1e-6)
    assert set(apart[1]) == set(one_pass[1]) and any(g.abs().sum() > 0 for g in apart[1].values())
    for name, grad in apart[1].items():
        torch.testing.assert_close(grad, one_pass[1][name], atol=1e-6, rtol=1e-5, msg=name)
    policy_calls = [grad for grad in apart[2] if grad]  # the reference runs without gradient
    if task == "preference":  # chosen, rejected, and the chosen again in backward
        assert len(policy_calls) == 3
    else:  # the rated rows only: the mismatched ones run without gradient
        assert len(policy_calls) == 1


@pytest.mark.parametrize("task,loss", [("preference", "dpo"), ("preference", "ipo"), ("preference", "orpo"),
                                       ("preference", "simpo"), ("kto", None)])
def test_lora_steps_leave_base_weights_bit_identical(preference_config, one_thread, task, loss):
    from peft import PeftModel

    overrides = {"train.max_steps": 2, "eval.general_check": False}
    if loss:
        overrides["preference.loss"] = loss
    config = preference_config(task, **overrides)
    result = train(config)
    assert result.state.step == 2
    from tuneforge.models.load import load_causal_lm

    base = load_causal_lm(config.model.name, torch.float32)
    tuned = PeftModel.from_pretrained(load_causal_lm(config.model.name, torch.float32), config.output_dir / "final")
    base_state = base.state_dict()
    changed = 0
    for name, value in tuned.named_parameters():
        if "lora_" in name:
            changed += int(not torch.equal(value, torch.zeros_like(value)) and "lora_B" in name)
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(value, base_state[key]), name
    assert changed > 0  # the adapter learned something
    rows = read_metrics(config.output_dir)
    trained = [r for r in rows if "train_loss" in r]
    assert trained and all(math.isfinite(r["train_loss"]) for r in trained)
    assert any("train_reward_accuracy" in r for r in trained)


def test_dpo_raises_held_out_reward_accuracy(preference_config, one_thread):
    config = preference_config(**{"train.max_steps": 12, "train.learning_rate": 1e-2, "eval.every_steps": 6,
                                  "preference.beta": 0.5})
    train(config)
    evaluations = [r for r in read_metrics(config.output_dir) if "eval_reward_accuracy" in r]
    assert evaluations[0]["eval_reward_accuracy"] == 0.0  # at the start the policy is its reference
    assert evaluations[-1]["eval_reward_accuracy"] >= 0.75
    assert evaluations[-1]["eval_margin"] > 0
    assert evaluations[-1]["eval_loss"] < evaluations[0]["eval_loss"]
    assert (config.output_dir / "eval" / "summary.json").is_file()


def test_full_fine_tune_with_precomputed_reference_equals_frozen_copy(preference_config, one_thread):
    """The cached log-probs of the start are the frozen copy's: the same DPO loss on the same batch."""
    losses, logps = {}, {}
    for reference in ("frozen_copy", "precomputed"):
        config = preference_config(**{"method": "full", "preference.reference": reference, "model.dtype": "float32",
                                      "output_dir": str(config_dir(preference_config, reference))})
        method, model = built(config)
        method.before_training(model, resuming=False)
        batch = method.batch([0, 1])
        losses[reference] = method.loss_terms(model, batch).terms["loss"].item()
        logps[reference] = method.reference_logps(batch, keep=False).sums
    # the same log-probs, up to float32 rounding of sums over ~100 tokens computed in batches of other shapes
    assert torch.allclose(logps["precomputed"], logps["frozen_copy"], rtol=1e-4)
    assert losses["frozen_copy"] == pytest.approx(2 * math.log(2), abs=1e-5)  # policy == reference at the start
    assert losses["precomputed"] == pytest.approx(2 * math.log(2), abs=2e-3)


def config_dir(factory, name):
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix=f"pref-{name}-"))


@pytest.mark.parametrize("overrides,message", [
    ({"task": "chat", "preference.loss": "ipo"}, "preference: applies to task: preference"),
    ({"preference.reference": "frozen_copy"}, "preference.reference: frozen_copy is for method: full"),
    ({"method": "full", "preference.reference": "adapter_off"}, "preference.reference: adapter_off needs method: lora"),
    ({"train.kl_to_base": 0.5}, "train.kl_to_base: is not supported with task: preference"),
    ({"data.format": "chat"}, "data.format: must be auto or preference"),
])
def test_settings_that_do_not_fit_the_task_are_refused(preference_config, overrides, message):
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        preference_config(**overrides)


def test_reference_auto_picks_adapter_off_for_lora_and_precomputed_otherwise(preference_config):
    from tuneforge.train.methods.preference import settings_of

    assert settings_of(preference_config()).reference == "adapter_off"
    assert settings_of(preference_config(**{"method": "full"})).reference == "precomputed"
    assert settings_of(preference_config(**{"preference.loss": "simpo"})).reference == "none"
    assert settings_of(preference_config("kto")).reference == "adapter_off"


def test_resume_reproduces_the_uninterrupted_run_with_a_precomputed_reference(preference_config, one_thread, tmp_path):
    """A full fine-tune with the starting weights' log-probs cached: stopped at step 2 and resumed, its losses
    are the uninterrupted run's (the reference comes from the cache, not from the half-trained weights)."""
    common = {"method": "full", "train.learning_rate": 1e-3, "train.max_steps": 4, "checkpoint.every_steps": 100,
              "preference.reference": "precomputed"}
    whole = preference_config(**common, output_dir=str(tmp_path / "whole"))
    train(whole)
    parted = preference_config(**common, output_dir=str(tmp_path / "parted"))
    assert train(parted, stop=lambda state: state.step == 2).interrupted_by == "stop"
    train(parted, resume=True)

    def losses(run_dir):
        return {r["step"]: r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r}

    assert losses(parted.output_dir) == pytest.approx(losses(whole.output_dir), abs=1e-5)


def test_preflight_estimates_a_dpo_run_leaves_it_unchanged_and_refuses_one_that_cannot_fit(
        preference_config, monkeypatch, tmp_path, one_thread):
    """The probe runs the real DPO loss (policy and reference passes) on the longest pair; its forked RNG and
    dropped gradients leave the curve as it is without it."""
    import json

    from tuneforge.train import preflight
    from tuneforge.train.preflight import PreflightError

    curves = {}
    for mode in ("refuse", "off"):
        config = preference_config(**{"train.preflight": mode, "lora.dropout": 0.1},
                                   output_dir=str(tmp_path / mode))
        curves[mode] = [r["train_loss"] for r in read_metrics(train(config).run_dir) if "train_loss" in r]
    assert curves["refuse"] == curves["off"]
    record = json.loads((tmp_path / "refuse" / "preflight.json").read_text())
    assert record["memory"]["rows"] == 4 and record["memory"]["activations"] > 0
    assert record["measured"]["peak"] >= record["memory"]["baseline"]

    monkeypatch.setattr(preflight, "available_memory", lambda device: 1024**2)  # 1 MiB free
    config = preference_config(**{"train.preflight": "refuse"}, output_dir=str(tmp_path / "refused"))
    with pytest.raises(PreflightError, match="this run needs about"):
        train(config)
    assert not any("train_loss" in r for r in read_metrics(config.output_dir))
