"""Choosing each row's next token: greedy or sampled, with the row's own temperature, top_p and generator.

Every row of a batch has its own settings and random generator, so a sequence with a seed gets the
same tokens whoever shares its batch (a served request, a GRPO answer): each row draws one uniform
number from its own generator and picks its token by inverse CDF, and the rest is vectorised over the
batch. Used by the batched decoding core (models/batched_decode.py) that serve's engine and GRPO's
rollouts share; tests/serve/test_decoding.py pins seeds, top-p and suppressed tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowSampling:
    temperature: float  # 0 decodes greedily
    top_p: float
    generator: torch.Generator | None  # None only for greedy rows


def new_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()  # fresh, non-deterministic
    else:
        generator.manual_seed(seed)
    return generator


def row_sampling(temperature: float, top_p: float, seed: int | None) -> RowSampling:
    """A row's settings; a generator only when it samples (greedy rows need none)."""
    return RowSampling(temperature, top_p, new_generator(seed) if temperature > 0 else None)


def suppressed_tokens(model, device) -> torch.Tensor | None:
    """Token ids the model's generation config never lets it emit (honoured as `generate` would)."""
    ids = getattr(getattr(model, "generation_config", None), "suppress_tokens", None)
    return torch.tensor(list(ids), device=device) if ids else None


def choose_tokens(logits: torch.Tensor, rows: list[RowSampling], suppressed: torch.Tensor | None) -> list[int]:
    """The next token of each row of `logits` ([rows, vocab]), greedy or sampled as the row asks."""
    logits = logits.float()
    if suppressed is not None:
        logits[:, suppressed] = float("-inf")
    chosen = logits.argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if row.temperature > 0]
    if sampled:
        index = torch.tensor(sampled, device=logits.device)
        temperature = torch.tensor([rows[i].temperature for i in sampled], device=logits.device)
        probs = torch.softmax(logits[index] / temperature[:, None], dim=-1)
        top_p = torch.tensor([rows[i].top_p for i in sampled], device=logits.device)
        probs, order = nucleus(probs, top_p)
        uniform = torch.cat([torch.rand(1, generator=rows[i].generator) for i in sampled]).to(logits.device)
        cumulative = probs.cumsum(dim=-1)
        target = (uniform * cumulative[:, -1])[:, None]
        position = torch.searchsorted(cumulative, target, right=True).clamp(max=probs.shape[1] - 1)
        chosen[index] = order.gather(1, position).squeeze(1)
    return chosen.tolist()


def nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities with everything outside each row's top-p nucleus zeroed, in the order they are kept.

    Rows with top_p 1 skip the sort (inverse CDF works in any order); the most likely token is always kept.
    """
    order = torch.arange(probs.shape[1], device=probs.device).expand_as(probs).clone()
    narrow = (top_p < 1).nonzero().flatten()
    if narrow.numel():
        sorted_probs, sorted_order = probs[narrow].sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
        sorted_probs = sorted_probs.masked_fill(before >= top_p[narrow, None], 0.0)
        probs = probs.clone()
        probs[narrow] = sorted_probs
        order[narrow] = sorted_order
    return probs, order
