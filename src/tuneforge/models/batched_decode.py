"""The batched decoding core: a left-padded KV cache that rows join and leave between decode steps.

A running batch is a left-padded KV cache (one row per sequence, an attention mask marking each
row's padding, position ids counted from the mask) and each row's newest token, not yet in the
cache. New prompts are prefilled together in one forward pass (a prompt asked for n sequences is
prefilled once and its cache rows repeated) and joined to a running batch (caches left-padded to
the same length); rows that finish leave at once, and columns that became padding in every row are
trimmed. So a sequence never waits for another to finish, only for the current step.

Two drivers share this one implementation, on the model's own weights in memory: serve's threaded
request queue (serve/engine.py) and GRPO's synchronous rollouts (models/rollout.py). What differs
between them (requests, text streaming, failure isolation; token lists) stays in the driver; each row
carries the driver's own object. tests/serve/test_engine.py pins that joined rows get the logits they
get alone and that greedy answers equal `generate`; tests/models/test_rollout.py pins the same for rollouts.

Rows for different LoRA adapters share the batch: peft's mixed-batch inference takes one adapter name
per row (`__base__` for the adapter-free base). `adapters=None` runs the model as it is (GRPO: the
adapter being trained). The cache handling needs full-attention layers (Llama, Qwen, SmolLM ...);
models with sliding-window or linear-attention layers are refused when the decoder is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.errors import ModelError

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any, "list[str | None] | None"], torch.Tensor]


@dataclass
class Batch:
    rows: list[Any]  # the driver's object for each row, in the cache's row order
    cache: object  # transformers DynamicCache
    mask: torch.Tensor  # [rows, cached tokens]: 1 real token, 0 left padding
    pending: torch.Tensor  # [rows]: each row's newest token, not yet in the cache


class BatchedDecoder:
    """Prefill and decode steps of a left-padded KV-cache batch, on `model` as it is in memory (no copy).

    `forward` replaces the forward pass of every prefill and decode (serve's engine routes it through
    its own `_forward`, the one place tests slow down or break); by default `self.forward`.
    """

    def __init__(self, model, pad_id: int, forward: Forward | None = None):
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.mixed_adapters = hasattr(model, "peft_config")
        self.core = model.get_base_model() if self.mixed_adapters else model
        self.cache_keyword = "cache" if "cache" in inspect.signature(self.core.forward).parameters else "past_key_values"
        self.run = forward or self.forward
        self.new_cache()  # refuses models whose cache layers cannot be joined

    def new_cache(self):
        from transformers.cache_utils import DynamicCache, DynamicLayer

        cache = DynamicCache(config=self.core.config)
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            kinds = sorted({type(layer).__name__ for layer in cache.layers})
            raise ModelError(f"tuneforge batches full-attention models only; this one has {', '.join(kinds)}")
        return cache

    def prefill(self, prompts: list[list[int]], copies: list[int], adapters: list[str | None] | None):
        """Cache, mask and last-position logits of each prompt's `copies` rows, prompt by prompt."""
        ids, mask = left_pad(prompts, self.pad_id, self.device)
        cache = self.new_cache()
        logits = self.run(ids, mask, position_ids(mask), cache, adapters)
        if any(n != 1 for n in copies):  # the copies share their prompt's prefill
            index = torch.tensor([i for i, n in enumerate(copies) for _ in range(n)], device=self.device)
            cache.batch_select_indices(index)
            mask, logits = mask[index], logits[index]
        return cache, mask, logits

    def decode(self, batch: Batch, adapters: list[str | None] | None) -> torch.Tensor:
        """Feed each row's pending token: its logits for the next one; the token joins the cache and mask."""
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=1)
        positions = batch.mask.sum(dim=1, keepdim=True)
        logits = self.run(batch.pending[:, None], mask, positions, batch.cache, adapters)
        batch.mask = mask
        return logits

    def forward(self, ids, mask, positions, cache, adapters: list[str | None] | None) -> torch.Tensor:
        """Last-position logits of each row, each row through its own adapter (None: the model as it is).

        A batch of one adapter takes peft's plain path (that adapter active, or all adapters
        disabled for the base): the mixed-batch path costs about 18% more per step on a CPU.
        """
        kwargs = {self.cache_keyword: cache, "attention_mask": mask, "position_ids": positions,
                  "use_cache": True, "logits_to_keep": 1}
        if adapters is None or not self.mixed_adapters:
            return self.model(input_ids=ids, **kwargs).logits[:, -1]
        names = {a or BASE_ADAPTER for a in adapters}
        if names == {BASE_ADAPTER}:
            with self.model.disable_adapter():
                return self.model(input_ids=ids, **kwargs).logits[:, -1]
        if len(names) == 1:
            [name] = names
            if self.model.active_adapter != name:
                self.model.set_adapter(name, inference_mode=True)
            return self.model(input_ids=ids, **kwargs).logits[:, -1]
        return self.model(input_ids=ids, adapter_names=[a or BASE_ADAPTER for a in adapters], **kwargs).logits[:, -1]


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def pad_cache_to(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad a [rows, heads, tokens, dim] key or value tensor to `width` tokens."""
    return F.pad(tensor, (0, 0, width - tensor.shape[-2], 0))


def merge(running: Batch | None, joining: Batch | None) -> Batch | None:
    """One batch holding both batches' rows, the shorter caches left-padded to the longer."""
    if running is None or joining is None:
        return running or joining
    width = max(running.mask.shape[1], joining.mask.shape[1])
    for mine, theirs in zip(running.cache.layers, joining.cache.layers):
        mine.keys = torch.cat([pad_cache_to(mine.keys, width), pad_cache_to(theirs.keys, width)])
        mine.values = torch.cat([pad_cache_to(mine.values, width), pad_cache_to(theirs.values, width)])
    masks = [F.pad(m, (width - m.shape[1], 0)) for m in (running.mask, joining.mask)]
    return Batch(running.rows + joining.rows, running.cache, torch.cat(masks),
                 torch.cat([running.pending, joining.pending]))


def keep_rows(batch: Batch | None, keep: list[int]) -> Batch | None:
    """The batch with only the rows in `keep`, and without leading columns that are padding in all of them."""
    if batch is None or not keep:
        return None
    if len(keep) == len(batch.rows):
        return batch
    index = torch.tensor(keep, device=batch.mask.device)
    batch.cache.batch_select_indices(index)
    mask, pending = batch.mask[index], batch.pending[index]
    start = int(mask.any(dim=0).int().argmax())  # the first column where some row has a real token
    if start:
        for layer in batch.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
        mask = mask[:, start:]
    return Batch([batch.rows[i] for i in keep], batch.cache, mask, pending)
