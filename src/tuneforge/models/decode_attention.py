"""One-token attention for CPU decoding: the query of a decode step against its cache, in two small matmuls.

In a decode step each row's query is one token, and torch's CPU `scaled_dot_product_attention` runs
its blocked flash kernel for it anyway: ~53 us per layer for SmolLM2-135M's 9 query heads over a
100-token cache, against ~21 us for the same product as two batched fp32 matmuls (the grouped query
heads sharing a key/value head become that head's rows, so nothing is repeated). Over 30 layers that
is ~0.5 ms of a ~12 ms int8 decode step (docs/deploy.md). Everything else (prefill, training, a
sliding window) goes to transformers' own SDPA attention unchanged.

Registered with transformers' attention interface under `NAME` and its masks built as SDPA's are, so
the model's own layers call it; `use_for_decoding` switches a model to it. The scores are computed in
float32, so this is an approximation only in the way bf16 or int8 decoding already is: it is used only
by those (models/packed.py), never for float32, whose greedy answers stay exactly plain transformers'.
tests/models/test_decode_attention.py pins it against SDPA, padded rows included.
"""

from __future__ import annotations

import torch

NAME = "tuneforge_decode"


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs):
    """transformers' attention-function signature: (attention output [rows, 1, heads, dim], no weights)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or module.training or kwargs.get("sliding_window"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scores = torch.bmm(query.reshape(rows * kv_heads, group, dim).float(),
                       key.reshape(rows * kv_heads, length, dim).float().transpose(1, 2))
    scores = scores.mul_(dim**-0.5 if scaling is None else scaling).view(rows, kv_heads, group, length)
    if attention_mask is not None:  # SDPA's mask: True where a position may be attended to, or additive floats
        mask = attention_mask[:, :, -1:, :length]
        scores = scores.masked_fill_(~mask, float("-inf")) if mask.dtype == torch.bool else scores.add_(mask)
    probabilities = torch.softmax(scores, dim=-1).view(rows * kv_heads, group, length)
    output = torch.bmm(probabilities, value.reshape(rows * kv_heads, length, dim).float())
    return output.view(rows, heads, 1, dim).transpose(1, 2).to(value.dtype), None


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_for_decoding(model) -> bool:
    """Switch a model that attends with SDPA to this attention (a PEFT wrapper's base model); False otherwise."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(core.config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    core.set_attn_implementation(NAME)
    return True
