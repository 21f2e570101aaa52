"""KL toward the base model: zero while the adapter is untouched, positive once it moved, replay rows only."""

import pytest
import torch

from tuneforge.config import load_config
from tuneforge.data.batching import collate
from tuneforge.data.template import IGNORE, TokenizedExample
from tuneforge.errors import ConfigError
from tuneforge.models.load import load_causal_lm
from tuneforge.train.loss import kl_to_base_sum, loss_sum


@pytest.fixture
def lora_model(tiny_model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = load_causal_lm(tiny_model, torch.float32)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))


def batch():
    examples = [
        TokenizedExample([5, 6, 7, 8, 9], [IGNORE, IGNORE, 7, 8, 9]),
        TokenizedExample([10, 11, 12, 13], [IGNORE, 11, 12, 13], replay=True),
    ]
    return collate(examples, pad_id=0)


def test_kl_is_zero_at_lora_init_and_positive_after_the_adapter_moves(lora_model):
    data = batch()
    rows = data["replay"]
    logits = lora_model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    assert kl_to_base_sum(lora_model, data, rows, logits[rows]).item() == pytest.approx(0.0, abs=1e-6)

    with torch.no_grad():
        for name, param in lora_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    logits = lora_model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    assert kl_to_base_sum(lora_model, data, rows, logits[rows]).item() > 1e-3


def test_kl_weight_changes_the_loss_only_through_replay_rows(lora_model):
    with torch.no_grad():
        for name, param in lora_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    lora_model.eval()
    data = batch()
    plain, no_kl = loss_sum(lora_model, data)
    assert no_kl.item() == 0.0
    cross_entropy, kl = loss_sum(lora_model, data, kl_weight=1.0, adapter_model=lora_model)
    assert cross_entropy.item() == pytest.approx(plain.item()) and kl.item() > 0
    data["replay"][:] = False
    _, kl = loss_sum(lora_model, data, kl_weight=1.0, adapter_model=lora_model)
    assert kl.item() == 0.0


def test_kl_needs_lora_and_replay(run_config):
    with pytest.raises(ConfigError, match=r"run.yaml:\d+: train.kl_to_base: needs method: lora") as error:
        load_config(run_config(method="full", **{"train.kl_to_base": 0.5, "data.replay": {"ratio": 0.2}}))
    assert "got" not in str(error.value)  # the whole config is not dumped into the message
    with pytest.raises(ConfigError, match="train.kl_to_base: needs"):
        load_config(run_config(**{"train.kl_to_base": 0.5}))
    load_config(run_config(**{"train.kl_to_base": 0.5, "data.replay": {"ratio": 0.2}}))


def test_a_run_with_kl_to_base_trains(run_config, tmp_path):
    from tests.conftest import write_jsonl
    from tuneforge.train.driver import train
    from tuneforge.evaluate.run_metrics import read_metrics

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Count to {i}."} for i in range(12)])
    config = load_config(run_config(**{
        "data.replay": {"ratio": 0.5, "prompts": str(prompts), "max_new_tokens": 6},
        "train.kl_to_base": 0.5, "train.max_steps": 3, "eval.general_check": False,
    }))
    result = train(config)
    assert result.interrupted_by is None
    logged = [r for r in read_metrics(result.run_dir) if "train_loss" in r]
    assert len(logged) == 3
    assert all(torch.isfinite(torch.tensor([r["train_loss"], r["train_kl_to_base"]])).all() for r in logged)
    assert any(r["train_kl_to_base"] > 0 for r in logged[1:])  # the adapter moved after step 1
