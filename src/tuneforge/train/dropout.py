"""LoRA dropout with cheaper random bits, for CPU training.

peft applies `nn.Dropout` to the input of every adapted layer (seven per decoder layer with
all-linear targets), and torch's CPU dropout draws one Bernoulli sample per element: measured on
the training benchmark's shapes (2-core CPU, 260 x 1536 fp32), 1.56 ms per call, about 13% of a
SmolLM2-135M LoRA step.  Here one 64-bit draw (`random_`, which fills the low 63 bits uniformly)
gives four 16-bit lanes, each compared with a threshold, and `masked_fill` applies the mask (a
multiply by a boolean tensor takes a slow type-promotion path): 0.66 ms for the same tensor.
Each element is dropped with probability p to within 1/32768 (the top lane has 15 random bits),
from the same seeded generator (so resume stays exact); the mask is saved for backward as one
byte per element, as torch's own dropout does.  The recipe is unchanged: the same rate, an
independent mask per layer and element, kept values scaled by 1 / (1 - p).  On CUDA torch's fused
dropout kernel is already cheap and is kept.
"""

from __future__ import annotations

import sys
from functools import cache

import torch
from torch import nn

LANES = 4  # 16-bit lanes in one int64 word; the top one has 15 random bits (random_() leaves the sign bit 0)
TOP = LANES - 1 if sys.byteorder == "little" else 0


@cache
def thresholds(p: float, device: torch.device) -> torch.Tensor:
    """Per lane, the int16 value at and above which an element is dropped."""
    full = round(65536 * (1.0 - p)) - 32768  # a full lane runs from -32768 to 32767
    top = round(32768 * (1.0 - p))  # the top lane from 0 to 32767
    return torch.tensor([top if lane == TOP else full for lane in range(LANES)], dtype=torch.int16, device=device)


def drop_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A boolean mask that is True (drop) with probability p, from the default generator."""
    count = shape.numel()
    words = torch.empty((count + LANES - 1) // LANES, dtype=torch.int64, device=device).random_()
    return (words.view(torch.int16).view(-1, LANES) >= thresholds(p, device)).view(-1)[:count].view(shape)


class BitsDropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x.masked_fill(drop_mask(x.shape, self.p, x.device), 0.0).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_bits_dropout(model: nn.Module) -> int:
    """Replace every LoRA dropout (peft's `lora_dropout` ModuleDicts) with BitsDropout; returns how many."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, dropout in dropouts.items():
                if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                    dropouts[name] = BitsDropout(dropout.p)
                    replaced += 1
    return replaced
