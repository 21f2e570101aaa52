"""Two adjustments that make bf16-autocast training cheaper, set once on the model being trained.

Each decides per call, from the inputs and the autocast state alone, so a recomputation under
gradient checkpointing (which restores autocast) takes the same path as the forward it repeats,
and evaluation or generation outside autocast is untouched.

- peft's LoRA layers copy their input to the adapters' dtype (fp32) before dropout, and autocast
  then copies it back to bf16 for the adapter's matmul: two copies per adapted layer for the same
  product (a bf16 value is exact in fp32, and the dropout scale rounds the same way).  Under
  autocast the input now stays as it is; without autocast peft still casts, as it must.
- On CPU, SDPA's flash kernel is slower in bf16 than its math kernel (which computes in fp32) for
  short rows.  2-core EPYC, 4 rows x 9 heads, forward + backward: 1.73 vs 2.59 ms at 64 positions,
  4.96 vs 7.70 at 128, but 9.52 vs 8.34 at 192.  Rows of at most MATH_ATTENTION_UP_TO positions take
  the math kernel; it keeps rows x heads x positions^2 probabilities per layer, small at that length.
"""

from __future__ import annotations

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

        with sdpa_kernel([SDPBackend.MATH]):
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


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
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if device.type == "cpu" and getattr(inner.config, "_attn_implementation", None) == "sdpa":
        register_attention()
        inner.set_attn_implementation(ATTENTION_NAME)
    return model
