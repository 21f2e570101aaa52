"""A causal LM's summed cross-entropy over trained positions, without the full logits in memory.

Memory: the fp32 logits of a whole batch (batch x length x vocabulary: 8 x 1024 x 49k x 4 bytes is
1.6 GB, and their gradient as much again) dwarf the rest of the activations.  The chunked path (`train.chunked_loss`,
the default for training, always for the validation loss) asks the model for its last hidden states and only one position of logits, keeps
the positions that are trained (assistant tokens; prompts are often most of a sequence), and
computes the LM head and cross-entropy over them a chunk at a time under activation
checkpointing, so at most one chunk's logits exist at once, forward or backward.  The result
equals the plain path to float rounding (tests/train/test_chunked_loss.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # the label of a position that is not trained (PyTorch's cross-entropy ignore_index)


CHUNK_TOKENS = 1024  # trained positions per LM-head chunk: 1024 x 49k fp32 logits = 200 MB
HEAD_ROWS_MULTIPLE = 64  # divides CHUNK_TOKENS


def output_layer(model) -> torch.nn.Module:
    """The LM head, through any DDP or PEFT wrapping."""
    return getattr(model, "module", model).get_output_embeddings()


def last_hidden_state(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The decoder's output for the batch, taken by a hook as the model runs (through its DDP, FSDP or PEFT
    wrapping), with one position of logits.

    A hook rather than `output_hidden_states`: that tuple keeps every layer's states, and accelerate's
    mixed-precision wrapper converts all of them to fp32.  The one position is picked by index: a
    gathered (batch, 1, hidden) copy is contiguous, while logits_to_keep=1 slices a strided view that
    CPU matmuls take a slow path for (148 ms per call in bf16 for SmolLM2's 49k-word head, 2 ms contiguous).
    """
    captured: list[torch.Tensor] = []
    decoder = getattr(model, "module", model).get_decoder()
    handle = decoder.register_forward_hook(lambda module, args, output: captured.append(output[0]))
    try:
        first = torch.zeros(1, dtype=torch.long, device=batch["input_ids"].device)
        model(**model_inputs(batch), logits_to_keep=first)
    finally:
        handle.remove()
    return captured[-1]


def chunked_cross_entropy(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    """Summed cross-entropy of the trained positions, the LM head applied a chunk at a time."""
    states = hidden[:, :-1].reshape(-1, hidden.size(-1))
    targets = labels[:, 1:].reshape(-1)
    trained = targets != IGNORE
    states, targets = states[trained], targets[trained]
    # Rows padded (zero states, ignored targets) to a multiple of HEAD_ROWS_MULTIPLE: each new row count
    # would get its own kernels (data/batching.py says why that costs memory on CPU).
    padding = -len(targets) % HEAD_ROWS_MULTIPLE
    states = F.pad(states, (0, 0, 0, padding))
    targets = F.pad(targets, (0, padding), value=IGNORE)
    if plain_linear(head):
        return LinearCrossEntropy.apply(states, head.weight, targets)
    return checkpointed_cross_entropy(states, targets, head)


def plain_linear(head: torch.nn.Module) -> bool:
    """A head whose whole forward is `states @ weight.T`: not quantized, adapted, biased or sharded."""
    from torch.distributed.tensor import DTensor

    return type(head) is torch.nn.Linear and head.bias is None and not isinstance(head.weight, DTensor)


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `states @ weight.T` against `targets`, with its gradients computed in the
    forward a chunk at a time, so a chunk's logits live only inside it and backward only scales the
    gradients: the head runs once, where a checkpointed chunk runs it again in backward (on the training
    benchmark's CPU steps that recomputation, with its fp32 copy and log-softmax, was ~4% of a step)."""

    @staticmethod
    def forward(ctx, states: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        grad_states = torch.zeros_like(states) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=states.device)
        for start in range(0, len(targets), CHUNK_TOKENS):
            chunk, chunk_targets = states[start:start + CHUNK_TOKENS], targets[start:start + CHUNK_TOKENS]
            logits = F.linear(chunk, weight)  # under autocast, in its dtype
            dtype = logits.dtype
            probabilities = logits.float()
            del logits
            trained = chunk_targets != IGNORE
            index = chunk_targets.clamp(min=0).unsqueeze(1)
            log_normalizer = torch.logsumexp(probabilities, dim=-1)
            total += ((log_normalizer - probabilities.gather(1, index).squeeze(1)) * trained).sum()
            if grad_states is None and grad_weight is None:  # evaluation: the value alone
                continue
            # d(loss)/d(logits) = softmax - one-hot on trained rows, built in the logits' buffer
            probabilities.sub_(log_normalizer.unsqueeze(1)).exp_()
            probabilities.scatter_add_(1, index, torch.full_like(probabilities[:, :1], -1.0))
            grad_logits = probabilities.mul_(trained.unsqueeze(1)).to(dtype)
            del probabilities
            if grad_states is not None:
                grad_states[start:start + CHUNK_TOKENS] = grad_logits @ weight.to(dtype)
            if grad_weight is not None:
                grad_weight += grad_logits.T @ chunk.to(dtype)
        ctx.save_for_backward(grad_states, None if grad_weight is None else grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        def scaled(grad: torch.Tensor | None) -> torch.Tensor | None:
            return None if grad is None else grad * grad_total.to(grad.dtype)

        grad_states, grad_weight = ctx.saved_tensors
        return scaled(grad_states), scaled(grad_weight), None


def checkpointed_cross_entropy(states: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    """The same sum through any head module, each chunk under activation checkpointing (recomputed in
    backward)."""
    from torch.utils.checkpoint import checkpoint

    def chunk_loss(chunk_states: torch.Tensor, chunk_targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(chunk_states).float(), chunk_targets, reduction="sum")

    total = states.sum().float() * 0.0  # zero, but part of the graph even when nothing is trained
    for start in range(0, len(targets), CHUNK_TOKENS):
        end = start + CHUNK_TOKENS
        total = total + checkpoint(chunk_loss, states[start:end], targets[start:end], use_reentrant=False)
    return total


def model_inputs(batch: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The model's keyword arguments from a batch: position_ids only when it has them (packed rows)."""
    names = ["input_ids", "attention_mask"] + (["position_ids"] if "position_ids" in batch else [])
    return {name: batch[name] if rows is None else batch[name][rows] for name in names}
