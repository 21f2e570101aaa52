"""Sample a group of answers per prompt, as token ids: the rollouts of reinforcement fine-tuning.

Uses the same batched KV-cache generation as evaluation (models/generate.py: its Sampling settings,
prompt rendering and end-of-turn stop ids; `model.generate` with left-padded prompts), asking for G
sequences per prompt in one call, on the policy's own weights (with LoRA, the current adapter) and
with no copy per step.  Each answer is cut after its first stop token, which it keeps: the policy
learns to end its turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tuneforge.models.generate import Sampling, render_prompt, stop_token_ids


@dataclass(frozen=True)
class Rollout:
    prompt_ids: list[int]
    completion_ids: list[int]  # up to and including the first stop token
    finished: bool  # ended with a stop token (False: cut at max_new_tokens)


@torch.no_grad()
def sample_groups(model, tokenizer, conversations: list[list[dict]], group_size: int, sampling: Sampling,
                  batch_size: int = 64) -> list[list[Rollout]]:
    """`group_size` sampled answers to each conversation, generated `batch_size` sequences at a time."""
    device = next(model.parameters()).device
    stops = stop_token_ids(model, tokenizer)
    prompts = [render_prompt(tokenizer, c) for c in conversations]
    per_call = max(1, batch_size // group_size)
    groups: list[list[Rollout]] = []
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start : start + per_call]
            batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            output = model.generate(**batch, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                                    num_return_sequences=group_size, **sampling.generate_kwargs())
            width = batch["input_ids"].shape[1]
            for row, sequence in enumerate(output.tolist()):
                prompt = batch["input_ids"][row // group_size][batch["attention_mask"][row // group_size].bool()]
                if row % group_size == 0:
                    groups.append([])
                groups[-1].append(cut_at_stop(prompt.tolist(), sequence[width:], stops))
    finally:
        tokenizer.padding_side = previous_side
    return groups


def cut_at_stop(prompt_ids: list[int], generated: list[int], stops: list[int]) -> Rollout:
    for index, token in enumerate(generated):
        if token in stops:
            return Rollout(prompt_ids, generated[: index + 1], True)
    return Rollout(prompt_ids, generated, False)
