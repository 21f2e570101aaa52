"""LoRA dropout on CPU: torch's recipe (rate, scaling, independent masks) from cheaper random bits, folded
into the adapter's first matmul so that autograd keeps the input once."""

from __future__ import annotations

import pytest
import torch

from tuneforge.train.dropout import DroppingLinear, fold_lora_dropout, keep_mask


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drop_rate_and_independence(p):
    torch.manual_seed(0)
    mask = ~keep_mask(torch.Size([1000, 999]), p, torch.device("cpu"))  # not a multiple of the lanes
    assert mask.shape == (1000, 999) and mask.dtype == torch.bool
    rate = mask.float().mean().item()
    assert abs(rate - p) < 4 * (p * (1 - p) / mask.numel()) ** 0.5 + 1 / 65536
    flat = mask.flatten().float()
    for lag in (1, 2, 3, 4):  # the lanes of one random word, and the next word
        assert abs(torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1].item()) < 0.01
    for lane in range(4):  # every 16-bit lane of the 64-bit words drops at the rate
        lane_rate = flat[: flat.numel() // 4 * 4].view(-1, 4)[:, lane].mean().item()
        assert abs(lane_rate - p) < 0.01


@pytest.mark.parametrize("autocast", [False, True])
def test_folded_dropout_equals_dropout_then_matmul(autocast):
    """Output and both gradients match dropout(x) @ A.T drawn with the same mask (bf16 under autocast)."""
    torch.manual_seed(1)
    x = torch.randn(3, 40, 33, requires_grad=True)
    linear = torch.nn.Linear(33, 8, bias=False)
    folded = DroppingLinear(linear, 0.25).train()
    assert folded.weight is linear.weight
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        torch.manual_seed(2)
        y = folded(x)
        torch.manual_seed(2)
        mask = ~keep_mask(x.shape, 0.25, x.device)
        reference = torch.nn.functional.linear(x.masked_fill(mask, 0.0) / 0.75, linear.weight)
    assert y.dtype == reference.dtype == (torch.bfloat16 if autocast else torch.float32)
    upstream = torch.randn(y.shape)
    folded_grads = torch.autograd.grad(y, (x, linear.weight), upstream)
    reference_grads = torch.autograd.grad(reference, (x, linear.weight), upstream)
    for ours, theirs in zip((y, *folded_grads), (reference, *reference_grads)):
        assert ours.dtype == theirs.dtype
        # bf16 rounds the 1/(1-p) scale at another point of the product: equal to bf16's precision of its scale
        scale = theirs.abs().max().item()
        torch.testing.assert_close(ours, theirs, rtol=0, atol=(2e-2 if autocast else 1e-6) * scale)
    assert torch.equal(folded_grads[0][mask], torch.zeros(int(mask.sum())))  # dropped inputs get no gradient
    assert torch.equal(folded.eval()(x), torch.nn.functional.linear(x, linear.weight))  # no dropout in eval


def test_projections_of_one_input_keep_it_once():
    """q, k and v read one input: autograd keeps that input, not a mask and a dropped copy per projection."""
    x = torch.randn(4, 64, 96, requires_grad=True)
    projections = [DroppingLinear(torch.nn.Linear(96, 16, bias=False), 0.05) for _ in range(3)]
    saved = {}

    def keep(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        outputs = [projection(x) for projection in projections]
    weights = sum(p.weight.numel() * 4 for p in projections)
    assert sum(saved.values()) == x.numel() * 4 + weights  # the masks are kept as bits beside, 1/32 of x here
    sum(o.sum() for o in outputs).backward()
    assert x.grad is not None and all(p.weight.grad is not None for p in projections)


def test_the_same_seed_gives_the_same_masks():
    def masks(seed):
        torch.manual_seed(seed)
        return [keep_mask(torch.Size([50, 70]), 0.1, torch.device("cpu")) for _ in range(3)]

    assert all(torch.equal(a, b) for a, b in zip(masks(3), masks(3)))
    assert not all(torch.equal(a, b) for a, b in zip(masks(3), masks(4)))


def test_every_lora_dropout_of_a_peft_model_is_folded(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
    adapted = sum(1 for m in model.modules() if hasattr(m, "lora_A"))
    keys = set(model.state_dict())
    assert fold_lora_dropout(model) == adapted > 0
    assert set(model.state_dict()) == keys  # adapters save and load under the same names
    assert all(isinstance(m.lora_A["default"], DroppingLinear) and m.lora_A["default"].p == 0.1
               and isinstance(m.lora_dropout["default"], torch.nn.Identity)
               for m in model.modules() if hasattr(m, "lora_A"))
    model.train()
    batch = torch.randint(0, 100, (2, 12))
    model(input_ids=batch, labels=batch).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
