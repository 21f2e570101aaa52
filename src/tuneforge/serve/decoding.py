"""Per-sequence decoding: choosing each row's next token, and turning tokens into safe-to-send text.

Every row of a batch has its own temperature, top_p and random generator, so a request with a
seed gets the same answer whoever shares its batch: each row draws one uniform number from its
own generator and picks its token by inverse CDF, and the rest is vectorised over the batch.
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


class TextStream:
    """The text of one reply as its tokens arrive, released only when it can no longer change.

    Held back: a trailing partial UTF-8 character (decoded as U+FFFD) and any tail that could be
    the start of a stop string; a stop string ends the text just before it.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.tokens: list[int] = []
        self.sent = 0  # characters of the text already released
        self.stopped = False

    def add(self, token: int) -> str:
        """Take one generated token; return the newly released text (maybe empty)."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self.release(text[:cut])
        end = len(text) - held_back(text, self.stop)
        while end > self.sent and text[end - 1] == "\ufffd":
            end -= 1
        return self.release(text[:end])

    def finish(self) -> str:
        """Everything not yet released, at the end of the reply (no stop string can complete now)."""
        if self.stopped:
            return ""
        return self.release(self.tokenizer.decode(self.tokens, skip_special_tokens=True))

    def release(self, text: str) -> str:
        piece = text[self.sent :]
        self.sent = max(self.sent, len(text))
        return piece


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
