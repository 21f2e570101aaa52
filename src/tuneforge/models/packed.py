"""Faster decoding on a CPU: a model's linear layers in bf16 prepacked for oneDNN, or in int8.

A decode step moves one token per row through every weight, so on a CPU it costs about what reading
the weights costs. bf16 halves those bytes, but a plain bf16 `F.linear` of one row runs barely faster
than fp32 here (both reorder the weight on every call); the same weights reordered once into
oneDNN's blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, the packing torch's own compiler
uses for CPU linears) run a 135M model's layers about 2.4x faster than fp32 (bench/RESULTS.md).
Packing changes no number: a packed bf16 linear equals `F.linear` on the same bf16 weights bit for
bit (tests/models/test_packed.py), so the only numerical change is the bf16 rounding itself.

int8 halves the bytes again: each weight row is stored as int8 with one scale (symmetric, rounded
from the float32 weights), multiplied against bf16 activations by torch's weight-only int8 kernel
(`aten._weight_int8pack_mm`), the trade llama.cpp's q8_0 makes (it keeps a scale per 32 weights, not
per row). On SmolLM2-135M: the linears of a decode step read 0.13 GB instead of 0.27, and
general-text perplexity rises 1.4% (bf16: 0.3%; docs/deploy.md).  Norms and embeddings stay bf16.

Both are opted into (`tuneforge serve --dtype bfloat16|int8`), never the default: fp32 greedy
answers stay exactly those of plain transformers.  Converted layers keep no `weight` parameter, so
such a model is for inference only: nothing saves, merges or trains it. LoRA layers keep their
adapters as they are (small, unconverted) and get a converted base layer; DoRA layers, which read the
base weight in their forward pass, stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tuneforge.errors import ConfigError
from tuneforge.models.decode_attention import use_for_decoding
from tuneforge.models.dtypes import DECODE_DTYPES
from tuneforge.models.load import native_bf16



def can_pack(device: torch.device) -> bool:
    """Whether oneDNN's packed bf16 linear runs in hardware here (a CPU with AVX512-BF16 or AMX)."""
    return (device.type == "cpu" and torch.backends.mkldnn.is_available() and native_bf16(device)
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class PackedLinear(nn.Module):
    """An `nn.Linear` whose bf16 weight was reordered once into oneDNN's layout; same outputs, faster."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        if weight.dtype != torch.bfloat16:
            raise ValueError(f"PackedLinear packs bf16 weights, got {weight.dtype}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)  # an opaque tensor: not a parameter
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.dtype != torch.bfloat16:
            rows = rows.to(torch.bfloat16)
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, bf16 packed"


class Int8Linear(nn.Module):
    """An `nn.Linear` as int8 weights with one scale per output row; bf16 in, bf16 out."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        # the scale the kernel multiplies by is bf16: round by that one, so each weight is within half a step
        scale = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.bfloat16).tiny).to(torch.bfloat16)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        steps = torch.round(weight / scale.float()[:, None]).clamp(-127, 127)
        self.register_buffer("quantized", steps.to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                  requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(rows, self.quantized, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def convert_linears(model: nn.Module, convert: Callable[[nn.Linear], nn.Module], dtype: torch.dtype) -> int:
    """Replace the `nn.Linear` layers of `model` whose weights are in `dtype` by `convert(layer)`, in place;
    how many were replaced.

    Skipped: a LoRA layer's own A/B matrices (peft reads their weights) and the base layer of a
    DoRA layer (its forward reads the base weight)."""
    count = 0
    for path, parent in list(model.named_modules()):
        lora = hasattr(parent, "lora_A")
        if path.rpartition(".")[2].startswith("lora_") or lora and any(getattr(parent, "use_dora", {}).values()):
            continue  # a LoRA layer's lora_A/lora_B dictionaries, or a DoRA layer
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == dtype and (not lora or name == "base_layer"):
                setattr(parent, name, convert(child))
                count += 1
    return count


def pack_linears(model: nn.Module) -> int:
    """Replace the bf16 `nn.Linear` layers of `model` by packed ones in place; how many were packed."""
    return convert_linears(model, PackedLinear, torch.bfloat16)


def for_decoding(model: nn.Module, dtype: str) -> nn.Module:
    """The model ready to decode in `dtype`: float32 leaves it untouched; bfloat16 converts it (in place)
    and packs its linear layers where the CPU runs bf16 natively; int8 quantizes the linear layers from
    the weights as loaded and converts the rest to bf16. On a CPU both attend with one-token decode
    attention (models/decode_attention.py)."""
    if dtype not in DECODE_DTYPES:
        raise ConfigError(f"decoding dtype {dtype!r}: expected one of {', '.join(DECODE_DTYPES)}")
    if dtype == "float32":
        return model
    device = next(model.parameters()).device
    if dtype == "int8":
        if device.type != "cpu":
            raise ConfigError(f"--dtype int8 decodes on a CPU (torch's int8 weight-only kernel); the model is on "
                              f"{device.type}: serve it in bfloat16 there, or with --engine vllm")
        weights = next(p.dtype for p in model.parameters() if p.is_floating_point())
        convert_linears(model, Int8Linear, weights)
        model.to(torch.bfloat16)
    else:
        model.to(torch.bfloat16)
        if can_pack(device):
            pack_linears(model)
    if device.type == "cpu":
        use_for_decoding(model)
    return model
