"""The training loss as a sum over trained tokens, so accumulation can divide by the true count.

Averaging per micro-batch and then over micro-batches weights short examples more than
long ones; summing and dividing once by the window's token count gives every trained token
the same weight, whatever the batch size or accumulation.

`train.kl_to_base` adds KL(base || tuned) on the trained tokens of replay records: the
reference is the same network with the LoRA adapter switched off, so no second copy of the
model is held in memory; it costs one extra forward pass (without gradients) over replay rows.

Packed batches (data/packing.py) carry position_ids and a 4-D block-diagonal mask; both are
passed to the model as they are, and the KL rows are sliced from them like the other inputs.

The chunked cross-entropy itself (models/token_loss.py) is shared with the validation loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuneforge.data.template import IGNORE
from tuneforge.models.token_loss import chunked_cross_entropy, last_hidden_state, model_inputs, output_layer


def loss_sum(
    model, batch: dict[str, torch.Tensor], kl_weight: float = 0.0, adapter_model=None, chunked: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy summed over trained tokens, KL to base summed over replay tokens).

    The KL part is computed only when kl_weight > 0 and the batch has replay rows (else it is 0);
    `adapter_model` is the unwrapped PEFT model whose adapter can be switched off.  The caller
    weighs and adds the two, and logs them apart so train_loss stays comparable across runs.
    """
    rows = batch.get("replay")
    needs_kl = kl_weight > 0 and rows is not None and bool(rows.any())
    if chunked and not needs_kl:  # the KL term needs every trained position's logits anyway
        cross_entropy = chunked_cross_entropy(last_hidden_state(model, batch), batch["labels"], output_layer(model))
        return cross_entropy, torch.zeros((), device=cross_entropy.device)
    logits = model(**model_inputs(batch)).logits
    shifted = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    targets = batch["labels"][:, 1:].reshape(-1)
    cross_entropy = F.cross_entropy(shifted, targets, ignore_index=IGNORE, reduction="sum")
    if needs_kl:
        return cross_entropy, kl_to_base_sum(adapter_model, batch, rows, logits[rows])
    return cross_entropy, torch.zeros((), device=cross_entropy.device)


def kl_to_base_sum(adapter_model, batch: dict[str, torch.Tensor], rows: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(base || tuned), summed over the trained tokens of the selected rows."""
    with torch.no_grad(), adapter_model.disable_adapter():
        base_logits = adapter_model(**model_inputs(batch, rows)).logits
    mask = batch["labels"][rows][:, 1:] != IGNORE
    tuned_logp = F.log_softmax(logits[:, :-1][mask].float(), dim=-1)
    base_logp = F.log_softmax(base_logits[:, :-1][mask].float(), dim=-1)
    return F.kl_div(tuned_logp, base_logp, log_target=True, reduction="sum")
