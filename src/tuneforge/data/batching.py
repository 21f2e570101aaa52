"""Batch order and padding: deterministic per (seed, epoch), so a resumed run sees the same batches.

Batches are grouped by length within shuffled windows of many batches, so little compute
goes to padding while the order stays random across windows.

Training and validation batches are padded to a multiple of WIDTH_MULTIPLE positions.  CPU bf16
matmuls run on oneDNN kernels that are generated and kept for each matrix shape (about 15 MB for
each new row width over a SmolLM2-135M LoRA step, measured on the 2-core EPYC), so a width per batch
made a process grow by hundreds of MB over a run; in multiples of 8 a 1024-token limit has at most
128 widths.  GPU tensor cores favour multiples of 8 as well.
"""

from __future__ import annotations

import torch

from tuneforge.data.template import IGNORE, TokenizedExample

GROUP_WINDOW = 32  # batches per length-sorting window
WIDTH_MULTIPLE = 8  # positions a training batch is padded to a multiple of


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * GROUP_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def collate(examples: list[TokenizedExample], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    width = -(-max(len(e.input_ids) for e in examples) // multiple) * multiple
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    replay = torch.tensor([example.replay for example in examples], dtype=torch.bool)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "replay": replay}
