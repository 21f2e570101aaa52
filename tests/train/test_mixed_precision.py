"""bf16 training where the hardware runs it natively, and the adjustments that make it cheaper on CPU."""

from __future__ import annotations

import pytest
import torch

from tuneforge.models import load
from tuneforge.train import mixed_precision
from tuneforge.train.mixed_precision import (
    ATTENTION_NAME,
    CastUnlessAutocast,
    RMSNormKeepingInput,
    computes_like_llama_rms_norm,
    for_bf16_autocast,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtypes_follow_native_bf16(monkeypatch, native):
    monkeypatch.setattr(load, "native_bf16", lambda device: native)
    assert load.training_dtype("auto", CPU) == (torch.bfloat16 if native else torch.float32)
    assert load.trains_under_autocast("auto", CPU) is native
    assert load.pick_dtype("auto", CPU) == torch.float32  # inference on CPU stays fp32 either way
    assert load.training_dtype("float32", CPU) == torch.float32 and not load.trains_under_autocast("float32", CPU)
    assert load.training_dtype("bfloat16", CPU) == torch.bfloat16 and load.trains_under_autocast("bfloat16", CPU)


def test_peft_input_casts_are_skipped_only_under_autocast():
    cast = CastUnlessAutocast()
    assert bool(cast)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not bool(cast)
    assert bool(cast)


def tiny_lora_model(seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    base = LlamaForCausalLM(config).to(torch.bfloat16)
    for name, parameter in base.named_parameters():  # norms away from 1, so their gradients are not trivial
        if "norm" in name:
            parameter.data.uniform_(0.5, 1.5)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")).train()


def loss_and_gradients(model, batch, checkpointing: bool = False):
    model.zero_grad()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_adjusted_model_trains_like_the_plain_one(checkpointing):
    """Same loss and LoRA gradients (to bf16 precision) with the adjustments, with and without activation
    checkpointing (whose recomputation must take the same paths as the forward)."""
    input_ids = torch.randint(0, 300, (3, 24))
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids}
    plain_loss, plain_grads = loss_and_gradients(tiny_lora_model(), batch)
    model = for_bf16_autocast(tiny_lora_model(), CPU)
    norms = [m for m in model.modules() if hasattr(m, "variance_epsilon")]
    assert norms and all("forward" in vars(m) for m in norms)  # every Llama RMSNorm now keeps its bf16 input
    assert model.get_base_model().config._attn_implementation == ATTENTION_NAME
    assert all(isinstance(m.cast_input_dtype_enabled, CastUnlessAutocast)
               for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))
    loss, grads = loss_and_gradients(model, batch, checkpointing)
    assert loss == pytest.approx(plain_loss, rel=1e-2)
    assert set(grads) == set(plain_grads)
    for name, grad in grads.items():
        expected = plain_grads[name]
        assert (grad - expected).norm() <= 0.05 * expected.norm(), name


def test_rms_norm_keeps_its_input_not_an_fp32_copy():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(64, eps=1e-5).to(torch.bfloat16)
    norm.weight.data.uniform_(0.5, 1.5)
    assert computes_like_llama_rms_norm(norm)
    x = torch.randn(2, 10, 64).to(torch.bfloat16).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = RMSNormKeepingInput.apply(x, norm.weight, norm.variance_epsilon)
    assert any(t is x or t.data_ptr() == x.data_ptr() for t in saved)
    assert all(t.dtype != torch.float32 or t.shape[-1] == 1 for t in saved)  # fp32 only: one scale per row
    assert torch.equal(out, norm(x))
    reference = x.detach().float().requires_grad_()
    expected = LlamaRMSNorm(64, eps=1e-5)
    expected.weight.data = norm.weight.data.float()
    upstream = torch.randn(2, 10, 64)
    expected(reference).backward(upstream)
    out.backward(upstream.to(torch.bfloat16))
    assert (x.grad.float() - reference.grad).norm() <= 1e-2 * reference.grad.norm()


def test_a_norm_that_computes_otherwise_keeps_its_own_forward():
    class OnePlusWeightNorm(torch.nn.Module):  # Gemma's convention
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(64, dtype=torch.bfloat16))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            x32 = x.float()
            return ((x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)) * (1 + self.weight.float())).to(x.dtype)

    assert not computes_like_llama_rms_norm(OnePlusWeightNorm())


@pytest.mark.parametrize("positions", [16, mixed_precision.MATH_ATTENTION_UP_TO + 8])
def test_short_and_long_rows_give_the_same_attention(positions):
    """Rows up to MATH_ATTENTION_UP_TO take the bf16 math kernel, longer ones flash: both agree with fp32."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    module = LlamaAttention(config, layer_idx=0)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, positions, 16, generator=generator)
    k, v = (torch.randn(2, 2, positions, 16, generator=generator) for _ in range(2))
    reference, _ = mixed_precision.short_rows_math_attention(module, q, k, v, None, scaling=0.25, is_causal=True)
    low = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    out, _ = mixed_precision.short_rows_math_attention(module, *low, None, scaling=0.25, is_causal=True)
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).norm() <= 1e-2 * reference.norm()
    out.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in low)
