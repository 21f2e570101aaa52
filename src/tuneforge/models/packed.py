"""bf16 decoding on a CPU: a model's weights in bf16 with its linear layers prepacked for oneDNN.

A decode step moves one token per row through every weight, so on a CPU it costs about what reading
the weights costs. bf16 halves those bytes, but a plain bf16 `F.linear` of one row runs barely faster
than fp32 here (both reorder the weight on every call); the same weights reordered once into
oneDNN's blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, the packing torch's own compiler
uses for CPU linears) run a 135M model's layers about 2.4x faster than fp32 (bench/RESULTS.md).
Packing changes no number: a packed bf16 linear equals `F.linear` on the same bf16 weights bit for
bit (tests/models/test_packed.py), so the only numerical change is the bf16 rounding itself, which
is why bf16 decoding is opted into (`tuneforge serve --dtype bfloat16`), never the default:
fp32 greedy answers stay exactly those of plain transformers.

Packed layers keep no `weight` parameter, so a packed model is for inference only: nothing saves,
merges or trains it. LoRA layers keep their adapters as they are (small, unpacked) and get a packed
base layer; DoRA layers, which read the base weight in their forward pass, stay unpacked.
"""

from __future__ import annotations

import torch
from torch import nn

from tuneforge.errors import ConfigError
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


def pack_linears(model: nn.Module) -> int:
    """Replace the bf16 `nn.Linear` layers of `model` by packed ones in place; how many were packed.

    Skipped: a LoRA layer's own A/B matrices (peft reads their weights) and the base layer of a
    DoRA layer (its forward reads the base weight)."""
    count = 0
    for path, parent in list(model.named_modules()):
        lora = hasattr(parent, "lora_A")
        if path.rpartition(".")[2].startswith("lora_") or lora and any(getattr(parent, "use_dora", {}).values()):
            continue  # a LoRA layer's lora_A/lora_B dictionaries, or a DoRA layer
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == torch.bfloat16 and (not lora or name == "base_layer"):
                setattr(parent, name, PackedLinear(child))
                count += 1
    return count


def for_decoding(model: nn.Module, dtype: str) -> nn.Module:
    """The model ready to decode in `dtype`: float32 leaves it untouched; bfloat16 converts it (in place)
    and packs its linear layers where the CPU runs bf16 natively."""
    if dtype not in DECODE_DTYPES:
        raise ConfigError(f"decoding dtype {dtype!r}: expected one of {', '.join(DECODE_DTYPES)}")
    if dtype == "float32":
        return model
    device = next(model.parameters()).device
    model.to(torch.bfloat16)
    if can_pack(device):
        pack_linears(model)
    return model
