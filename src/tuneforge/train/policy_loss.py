"""GRPO's pieces as plain functions: group-normalised advantages, per-token log-probabilities of the
answers, and the clipped policy-gradient objective with its KL (k3) to the reference.

Advantages: each answer's reward minus its group's mean, divided by the group's standard deviation
(unbiased, as TRL computes it; + 1e-4) unless `scale_rewards` is off (Dr. GRPO: the division favours
groups with little spread).  A group whose answers all score the same has no signal: every
advantage is 0, and only the KL term moves the model there.

Loss, per answer token t of answer i, with ratio r = exp(logp - old_logp):
    -min(r * A_i, clip(r, 1 - eps, 1 + eps) * A_i) + beta * (exp(ref - logp) - (ref - logp) - 1)
summed over every answer token; the step driver divides the sum once by the number of answer tokens
in the step (token-level normalisation, as DAPO and Dr. GRPO do: each token weighs the same, so long
answers are not down-weighted per token as GRPO's original per-answer mean does).
tests/train/test_grpo.py checks the advantages and the loss of a fixed group against a hand computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tuneforge.models.token_loss import last_hidden_state, output_layer

STD_FLOOR = 1e-4


def group_advantages(rewards: torch.Tensor, scale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, no-signal flags) of a (groups, G) reward matrix."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    advantages = centred / (std + STD_FLOOR) if scale else centred
    no_signal = (rewards.max(dim=1).values - rewards.min(dim=1).values) == 0
    return advantages, no_signal


def answer_log_probs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(token) of each answer token, flat in row-major order of `completion_mask` (fp32).

    The LM head runs on the answer positions only (the hidden states come from a hook, as in the
    chunked cross-entropy of models/token_loss.py), so the prompt's logits never exist."""
    hidden = last_hidden_state(model, batch)
    targets = batch["completion_mask"][:, 1:].bool()
    states = hidden[:, :-1][targets]
    logits = output_layer(model)(states).float()
    tokens = batch["input_ids"][:, 1:][targets]
    return logits.log_softmax(dim=-1).gather(1, tokens.unsqueeze(1)).squeeze(1)


@dataclass
class PolicyTerms:
    policy: torch.Tensor  # summed clipped objective (negated: a loss)
    kl: torch.Tensor  # summed k3 estimate of KL(policy || reference)
    clipped: float  # tokens whose ratio the clip cut off


def clipped_objective(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, epsilon: float,
                      ref_logp: torch.Tensor | None = None) -> PolicyTerms:
    """The per-token GRPO loss, summed; `advantages` per token (its answer's)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * advantages
    policy = -torch.minimum(unclipped, clipped).sum()
    cut = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + epsilon) & (advantages > 0))
    if ref_logp is None:
        kl = torch.zeros((), device=logp.device)
    else:
        delta = ref_logp - logp
        kl = (torch.exp(delta) - delta - 1).sum()
    return PolicyTerms(policy, kl, float(cut.sum()))
