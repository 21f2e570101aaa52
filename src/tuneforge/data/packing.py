"""Sequence packing: several tokenized examples share one row, so little compute goes to padding.

Why a 4-D mask: with transformers 5.24 and the `sdpa`/`eager` attention, position ids that
restart per example do not keep packed examples apart (measured: the second example's logits
moved by 0.5), while a block-diagonal causal mask does.  The mask is additive float, because
`eager` gives wrong logits with a boolean 4-D mask; it must be in the model's compute dtype.
Position ids still restart per example: models with absolute positions need them, and
flash-attention's variable-length path finds example boundaries from them.

Replay rows and task rows never share a bin, because the KL-to-base term is chosen per row.

Continued pretraining reads documents far longer than a row: `split_blocks` cuts one into
consecutive rows first (the first position of each block is not predicted, as in every
block-wise pretraining recipe), and the last, shorter block is packed with others.
"""

from __future__ import annotations

import torch

from tuneforge.data.template import IGNORE, TokenizedExample


def split_blocks(tokens: TokenizedExample, max_len: int) -> list[TokenizedExample]:
    """A tokenized text longer than max_len as consecutive blocks of max_len tokens (the last one shorter)."""
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2 to train on blocks, got {max_len}")
    return [TokenizedExample(tokens.input_ids[start : start + max_len], tokens.labels[start : start + max_len],
                             tokens.replay)
            for start in range(0, len(tokens.input_ids), max_len)]


def pack(lengths: list[int], max_len: int, replay: list[bool] | None = None) -> list[list[int]]:
    """Group example indices into bins of total length <= max_len, first-fit-decreasing.

    Deterministic: examples are placed longest first, ties by index, each into the
    lowest-numbered bin it fits.  Task bins come first, then replay bins.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    if replay is not None and len(replay) != len(lengths):
        raise ValueError(f"{len(lengths)} lengths but {len(replay)} replay flags")
    for index, length in enumerate(lengths):
        if length < 1:
            raise ValueError(f"example {index} is empty")
        if length > max_len:
            raise ValueError(f"example {index} has {length} tokens, more than the packing length {max_len}")
    flags = replay if replay is not None else [False] * len(lengths)
    bins: list[list[int]] = []
    for kind in (False, True):
        indices = [i for i in range(len(lengths)) if bool(flags[i]) == kind]
        bins += _first_fit_decreasing(indices, lengths, max_len)
    return bins


def _first_fit_decreasing(indices: list[int], lengths: list[int], max_len: int) -> list[list[int]]:
    """First-fit over a max-tree of free space, so packing n examples costs O(n log n), not O(n * bins).

    Unopened bins sit in the tree with full capacity; since bins open left to right, the
    leftmost leaf that fits is either an open bin or the next one to open.
    """
    size = 1
    while size < max(len(indices), 1):
        size *= 2
    free = [max_len] * (2 * size)
    bins: list[list[int]] = []
    for index in sorted(indices, key=lambda i: (-lengths[i], i)):
        length, node = lengths[index], 1
        while node < size:
            node = 2 * node if free[2 * node] >= length else 2 * node + 1
        slot = node - size
        if slot == len(bins):
            bins.append([])
        bins[slot].append(index)
        free[node] -= length
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return bins


def collate_packed(
    examples: list[list[TokenizedExample]], pad_id: int, dtype: torch.dtype = torch.float32, multiple: int = 1
) -> dict[str, torch.Tensor]:
    """One row per bin: input_ids, labels, position_ids, a 4-D additive attention mask, replay, tokens.

    `attention_mask` has shape (rows, 1, width, width): 0 where a query may attend (same
    example, key at or before the query), the dtype's minimum elsewhere.  The padding tail of
    a row is treated as one more (untrained) segment, so a padded query attends to itself and
    earlier padding and its softmax is never over nothing (no NaN).  Each example's first
    label is IGNORE, so the causal shift never predicts one example's first token from the
    previous example's last; that position is never a target when the example is alone either,
    so the trained tokens are exactly those of unpacked batches.  `tokens` counts non-pad
    tokens per row (the 4-D mask cannot be summed for that).
    """
    if not examples or any(not row for row in examples):
        raise ValueError("collate_packed needs at least one example in every row")
    width = -(-max(sum(len(e.input_ids) for e in row) for row in examples) // multiple) * multiple
    rows = len(examples)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    labels = torch.full((rows, width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((rows, width), dtype=torch.long)
    segments = torch.full((rows, width), -1, dtype=torch.long)  # -1: padding
    tokens = torch.zeros(rows, dtype=torch.long)
    replay = torch.zeros(rows, dtype=torch.bool)
    for r, row in enumerate(examples):
        if len({e.replay for e in row}) > 1:
            raise ValueError(f"row {r} mixes replay and task examples; the KL term is chosen per row")
        replay[r] = row[0].replay
        start = 0
        for segment, example in enumerate(row):
            n = len(example.input_ids)
            input_ids[r, start : start + n] = torch.tensor(example.input_ids)
            labels[r, start : start + n] = torch.tensor(example.labels)
            labels[r, start] = IGNORE
            position_ids[r, start : start + n] = torch.arange(n)
            segments[r, start : start + n] = segment
            start += n
        tokens[r] = start
        position_ids[r, start:] = torch.arange(width - start)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "attention_mask": block_causal_mask(segments, dtype),
        "replay": replay,
        "tokens": tokens,
    }


def block_causal_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(rows, 1, width, width) additive mask: attend within the same segment, causally."""
    width = segments.size(1)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]
