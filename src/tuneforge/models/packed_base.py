"""A LoRA model's frozen bf16 base layers, packed once for decoding and swapped in while it generates.

GRPO generates with the policy every step; on a CPU a decode step costs about what its linear layers
cost, and a plain bf16 `F.linear` reorders its weight on every call (models/packed.py). With LoRA the
base weights never change during a run, so they are packed once (oneDNN's blocked layout, the same
numbers: tests/models/test_packed.py) and swapped in for the rollouts only; the trainable adapters stay
as they are, so the current adapter generates. Training keeps the original layers (autograd needs
their weights). The packed layout is a second copy of the frozen base (about 2 bytes per base
parameter: ~270 MB for SmolLM2-135M), made once per run, never per step; nothing trainable is copied.
Layers that train (full fine-tuning, an output layer in `modules_to_save`) are never packed.
tests/models/test_rollout.py pins that rollouts with the packed base give the tokens of the plain model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from tuneforge.models.packed import PackedLinear, can_pack


@dataclass(frozen=True)
class Swap:
    parent: nn.Module
    name: str
    original: nn.Module
    packed: PackedLinear


class PackedBase:
    """The packed layers of one model; `swapped()` puts them in place for as long as the block runs."""

    def __init__(self, swaps: list[Swap]):
        self.swaps = swaps

    @contextmanager
    def swapped(self) -> Iterator[None]:
        for swap in self.swaps:
            setattr(swap.parent, swap.name, swap.packed)
        try:
            yield
        finally:
            for swap in self.swaps:
                setattr(swap.parent, swap.name, swap.original)


def frozen_bf16(layer: nn.Module) -> bool:
    return (type(layer) is nn.Linear and layer.weight.dtype == torch.bfloat16
            and not any(p.requires_grad for p in layer.parameters()))


def pack_frozen_base(model: nn.Module) -> PackedBase | None:
    """The packed frozen base of a LoRA model (peft), or None where nothing can be packed: no adapter,
    a CPU without native bf16, a base that trains or is not bf16, DoRA layers (they read the base weight)."""
    if not hasattr(model, "get_base_model") or not can_pack(next(model.parameters()).device):
        return None
    swaps = []
    for parent in model.modules():
        base = getattr(parent, "base_layer", None)
        if hasattr(parent, "lora_A") and frozen_bf16(base) and not any(getattr(parent, "use_dora", {}).values()):
            swaps.append(Swap(parent, "base_layer", base, PackedLinear(base)))
    core = model.get_base_model()
    head = core.get_output_embeddings()
    if frozen_bf16(head):
        owner, _, name = next(path for path, module in core.named_modules() if module is head).rpartition(".")
        swaps.append(Swap(core.get_submodule(owner), name, head, PackedLinear(head)))
    return PackedBase(swaps) if swaps else None
