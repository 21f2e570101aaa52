"""Three adjustments that make bf16-autocast training cheaper, set once on the model being trained.

Each decides per call, from the inputs and the autocast or grad-mode state alone, so a recomputation
under gradient checkpointing (which restores autocast) takes the same path as the forward it repeats,
and evaluation or generation (no autocast, or no gradients) computes what the unadjusted model does.

- peft's LoRA layers copy their input to the adapters' dtype (fp32) before dropout, and autocast
  then copies it back to bf16 for the adapter's matmul: two copies per adapted layer for the same
  product (a bf16 value is exact in fp32, and the dropout scale rounds the same way).  Under
  autocast the input now stays as it is; without autocast peft still casts, as it must.
- On CPU, SDPA's flash kernel is slower in bf16 than its math kernel for short rows, and the math
  kernel is faster still, and keeps half the memory, when it multiplies in bf16 rather than copying
  q, k and v to fp32 (torch's `allow_fp16_bf16_reduction_math_sdp`, which despite its module applies
  on CPU too).  2-core EPYC, 4 rows x 9 heads (3 key-value heads) x 64 dims, forward + backward:

  | positions | flash | math, fp32 copies | math, bf16 |
  | --- | --- | --- | --- |
  | 64 | 2.84 ms, 0.80 MB kept | 1.67 ms, 2.95 MB | 0.95 ms, 1.47 MB |
  | 120 | 5.90 ms, 1.49 MB | 3.51 ms, 7.46 MB | 2.25 ms, 3.73 MB |
  | 256 | 13.95 ms, 3.18 MB | 15.44 ms, 25.95 MB | 7.36 ms, 12.98 MB |

  Against an fp32 reference the bf16 math kernel's output and gradients are off by 0.45-0.6% (norm
  of the difference), flash's by 0.3-0.5%: both the precision of bf16.  What the math kernel keeps
  grows with the square of the row, so rows of at most MATH_ATTENTION_UP_TO positions take it and
  longer rows keep flash.
- HF's Llama-family RMSNorm copies its bf16 input to fp32, and autograd keeps that copy for backward
  (2.3 KB per token and norm for SmolLM2).  `RMSNormKeepingInput` computes the same output and keeps
  the bf16 input itself (half the bytes) and one fp32 scale per row; each norm class
  is checked on a probe to give bit-identical outputs before its modules use it.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch

MATH_ATTENTION_UP_TO = 128  # positions per row
ATTENTION_NAME = "tuneforge_sdpa"


class CastUnlessAutocast:
    """Truthy, as peft reads `cast_input_dtype_enabled` on every forward, exactly when no autocast is on."""

    def __bool__(self) -> bool:
        return not (torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"))

    def __repr__(self) -> str:
        return "CastUnlessAutocast()"


def short_rows_math_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, with the math kernel for short bf16 rows on CPU."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.device.type == "cpu" and query.dtype == torch.bfloat16 and query.shape[2] <= MATH_ATTENTION_UP_TO:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.MATH]), bf16_math_attention():
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


@contextmanager
def bf16_math_attention():
    """SDPA's math kernel multiplies bf16 inputs in bf16 (with fp32 accumulation) inside the block."""
    allowed = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    try:
        yield
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(allowed)


class RMSNormKeepingInput(torch.autograd.Function):
    """`weight * (x / rms(x))` computed in fp32 and rounded to x's dtype, as HF's Llama-family RMSNorm
    does, keeping x itself (and one fp32 scale per row) for backward instead of its fp32 copy."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        inverse_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, inverse_rms)
        return weight * (x32 * inverse_rms).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, inverse_rms = ctx.saved_tensors
        normed32 = x.float() * inverse_rms
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed32.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        grad_normed = (grad * weight).to(x.dtype).float()
        grad_x = inverse_rms * (grad_normed - normed32 * (grad_normed * normed32).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), grad_weight, None


def rms_norm_keeping_input(module, hidden_states: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():
        return type(module).forward(module, hidden_states)
    return RMSNormKeepingInput.apply(hidden_states, module.weight, module.variance_epsilon)


def computes_like_llama_rms_norm(module) -> bool:
    """Whether this norm's own forward gives exactly RMSNormKeepingInput's output, checked on a bf16 probe
    (Gemma's `1 + weight` or a norm that rounds elsewhere does not, and keeps its own forward)."""
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 1 or not isinstance(eps, float):
        return False
    probe = torch.randn(3, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight.device, torch.bfloat16)
    with torch.no_grad():
        return torch.equal(module(probe), RMSNormKeepingInput.apply(probe, weight, eps))


def register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if ATTENTION_NAME not in AttentionMaskInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, short_rows_math_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def for_bf16_autocast(model, device: torch.device):
    """The model, adjusted for bf16-autocast training on `device` (a LoRA model or a full one)."""
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = CastUnlessAutocast()
    checked: dict[type, bool] = {}
    for module in model.modules():
        kind = type(module)
        if hasattr(module, "variance_epsilon"):
            if kind not in checked:
                checked[kind] = computes_like_llama_rms_norm(module)
            if checked[kind]:
                module.forward = partial(rms_norm_keeping_input, module)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if device.type == "cpu" and getattr(inner.config, "_attn_implementation", None) == "sdpa":
        register_attention()
        inner.set_attn_implementation(ATTENTION_NAME)
    return model
