"""Validation loss: mean cross-entropy per trained token over a held-out set.

It takes the training loss's chunked path: a batch's full fp32 logits (batch x length x vocabulary) would
be the run's largest allocation (~0.5 GB for the quickstart's batches of 8 x 120 tokens, above the
training steps' own peak), for a number the chunked path computes equally."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from tuneforge.data.batching import WIDTH_MULTIPLE, collate
from tuneforge.data.dataset import label_count
from tuneforge.data.template import TokenizedExample
from tuneforge.models.token_loss import chunked_cross_entropy, last_hidden_state, output_layer


@torch.no_grad()
def validation_loss(model, examples: list[TokenizedExample], batch_size: int, pad_id: int, autocast=nullcontext) -> float:
    if not examples:
        return math.nan
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    for start in range(0, len(ordered), batch_size):
        batch = {k: v.to(device) for k, v in collate(ordered[start : start + batch_size], pad_id, WIDTH_MULTIPLE).items()}
        with autocast():
            # chunked: the head runs on trained positions only, and the batch's full logits never exist
            hidden = last_hidden_state(model, batch)
            total += chunked_cross_entropy(hidden, batch["labels"], output_layer(model)).item()
        count += label_count(batch["labels"])
    model.train(was_training)
    return total / max(count, 1)
