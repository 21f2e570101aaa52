"""LoRA dropout folded into the adapter's first matmul, with cheaper random bits, for CPU training.

peft applies `nn.Dropout` to the input of every adapted layer (seven per decoder layer with
all-linear targets) and then `lora_A` to the dropped copy.  Two costs, both measured on the training
benchmark (bench/RESULTS.md, 2-core CPU):

- Time.  torch's CPU dropout draws one Bernoulli sample per element: 1.56 ms per 260 x 1536 fp32
  call, about 13% of a SmolLM2-135M LoRA step.  Here one 64-bit draw (`random_` over the whole
  int64 range) gives four 16-bit lanes, each compared with one threshold, and the input is
  multiplied by the mask as 0/1 values (converted through uint8: bool converts 6x slower): on a
  272 x 576 bf16 input the multiply takes 14 us where `torch.where` takes 41 and `masked_fill` 62.  Each element is dropped with probability p to within 1/65536,
  from the same seeded generator, so resume stays exact.
- Memory.  Autograd keeps, per adapted layer, the boolean mask and the dropped copy of the input
  (3 bytes per element in bf16); q, k and v read the same input, so a decoder layer keeps three
  masks and three copies of it.  `DropThenProject` keeps the input itself (one tensor that the
  three projections share) and its mask packed to one bit per element (numpy's packbits: 4 us
  to pack, 8 us to unpack, against 0.14 ms to draw the mask again): measured on SmolLM2-135M
  under bf16 autocast, 7.1 KB per token and layer kept instead of 14.6 KB.

The recipe is unchanged: the same rate, an independent mask per layer and element, kept values
scaled by 1 / (1 - p) (applied to the rank-r product instead of the input: the same value).  On
CUDA torch's fused dropout kernel is already cheap and peft's modules are kept.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LANES = 4  # 16-bit lanes in one int64 word


def drop_threshold(p: float) -> int:
    """The int16 lane value at and above which an element is dropped (a lane runs from -32768 to 32767)."""
    return min(round(65536 * (1.0 - p)) - 32768, 32767)


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A boolean mask that is False (drop) with probability p, from torch's default generator."""
    count = shape.numel()
    words = torch.empty((count + LANES - 1) // LANES, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    return (words.view(torch.int16)[:count] < drop_threshold(p)).view(shape)


def as_values(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The mask as 0/1 values to multiply by: through uint8, which converts ~6x faster than bool."""
    return keep.view(torch.uint8).to(dtype)


class DropThenProject(torch.autograd.Function):
    """dropout(x, p) @ weight.T on CPU, keeping x and the mask's bits for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p, x.device)
        out = F.linear(x * as_values(keep, x.dtype), weight).mul_(1.0 / (1.0 - p))  # autocast picks the dtype
        ctx.save_for_backward(x, weight)
        ctx.keep_bits = np.packbits(keep.numpy().reshape(-1))
        ctx.p = p
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        keep = torch.from_numpy(np.unpackbits(ctx.keep_bits, count=x.numel())).view(x.shape).to(x.dtype)
        grad = grad_out * (1.0 / (1.0 - ctx.p))
        dtype = grad.dtype  # the forward's matmul dtype
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight.to(dtype)).to(x.dtype) * keep
        if ctx.needs_input_grad[1]:
            dropped = (x * keep).to(dtype)
            grad_weight = (grad.reshape(-1, grad.shape[-1]).T @ dropped.reshape(-1, x.shape[-1])).to(weight.dtype)
        return grad_x, grad_weight, None


class DroppingLinear(nn.Linear):
    """A LoRA `lora_A` (no bias) with its dropout folded in; the same parameter, under the same name."""

    def __init__(self, linear: nn.Linear, p: float):
        if not 0.0 < p < 1.0:
            raise ValueError(f"dropout probability must be in (0, 1), got {p}")
        super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
        self.weight = linear.weight
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.device.type == "cpu":
            return DropThenProject.apply(x, self.weight, self.p)
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.p}"


def fold_lora_dropout(model: nn.Module) -> int:
    """Fold every LoRA dropout (peft's `lora_dropout` ModuleDicts) into its `lora_A`; returns how many."""
    folded = 0
    for module in model.modules():
        dropouts, projections = getattr(module, "lora_dropout", None), getattr(module, "lora_A", None)
        if not (isinstance(dropouts, nn.ModuleDict) and isinstance(projections, nn.ModuleDict)):
            continue
        for name, dropout in dropouts.items():
            projection = projections[name] if name in projections else None
            if (isinstance(dropout, nn.Dropout) and dropout.p > 0 and type(projection) is nn.Linear
                    and projection.bias is None):
                projections[name] = DroppingLinear(projection, dropout.p)
                dropouts[name] = nn.Identity()
                folded += 1
    return folded
