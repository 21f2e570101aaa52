"""The causal-LM loss as a sum over trained tokens, so accumulation can divide by the true count.

Averaging per micro-batch and then over micro-batches weights short examples more than
long ones; summing and dividing once by the window's token count gives every trained token
the same weight, whatever the batch size or accumulation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuneforge.data.template import IGNORE


def loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    targets = batch["labels"][:, 1:].reshape(-1)
    return F.cross_entropy(shifted, targets, ignore_index=IGNORE, reduction="sum")
