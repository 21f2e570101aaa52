"""BitsDropout: torch's dropout recipe (rate, scaling, independent masks) from cheaper random bits."""

from __future__ import annotations

import pytest
import torch

from tuneforge.train.dropout import BitsDropout, drop_mask, use_bits_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drop_rate_and_independence(p):
    torch.manual_seed(0)
    mask = drop_mask(torch.Size([1000, 999]), p, torch.device("cpu"))  # not a multiple of the lanes
    assert mask.shape == (1000, 999) and mask.dtype == torch.bool
    rate = mask.float().mean().item()
    assert abs(rate - p) < 4 * (p * (1 - p) / mask.numel()) ** 0.5 + 1 / 32768
    flat = mask.flatten().float()
    for lag in (1, 2, 3, 4):  # the lanes of one random word, and the next word
        assert abs(torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1].item()) < 0.01
    for lane in range(4):  # every lane of the 64-bit words, the 15-bit top one included, drops at the rate
        lane_rate = flat[: flat.numel() // 4 * 4].view(-1, 4)[:, lane].mean().item()
        assert abs(lane_rate - p) < 0.01


def test_forward_and_backward_follow_one_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    dropout = BitsDropout(0.25).train()
    y = dropout(x)
    y.backward(torch.ones_like(y))
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    assert torch.equal(x.grad, kept.float() / 0.75)
    assert torch.equal(dropout.eval()(x), x)  # identity when not training


def test_the_same_seed_gives_the_same_masks():
    def masks(seed):
        torch.manual_seed(seed)
        return [drop_mask(torch.Size([50, 70]), 0.1, torch.device("cpu")) for _ in range(3)]

    assert all(torch.equal(a, b) for a, b in zip(masks(3), masks(3)))
    assert not all(torch.equal(a, b) for a, b in zip(masks(3), masks(4)))


def test_every_lora_dropout_of_a_peft_model_is_replaced(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
    adapted = sum(1 for m in model.modules() if hasattr(m, "lora_A"))
    assert use_bits_dropout(model) == adapted > 0
    assert all(isinstance(d, BitsDropout) and d.p == 0.1
               for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values())
    model.train()
    batch = torch.randint(0, 100, (2, 12))
    model(input_ids=batch, labels=batch).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
