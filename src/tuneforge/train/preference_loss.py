"""The preference losses (DPO, IPO, ORPO, SimPO, KTO) on answer log-probabilities, and those log-probabilities.

Every loss here is a function of per-answer log-probabilities (summed over the answer's trained
tokens, with their count), so it can be checked by hand on a fixed batch
(tests/train/test_preference.py computes each from the model's logits with plain PyTorch):

- DPO (sigmoid; Rafailov et al. 2023): h = (log pi(c) - log ref(c)) - (log pi(r) - log ref(r));
  loss = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h), eps = label smoothing
  (conservative DPO); rewards beta (log pi - log ref) per side.
- IPO (Azar et al. 2023): (h - 1 / (2 beta))^2 with per-token average log-probabilities (as TRL).
- ORPO (Hong et al. 2024): mean NLL of the chosen tokens - beta log sigmoid(log odds(c) - log odds(r)),
  odds from per-token average log-probabilities p: log odds = p - log(1 - exp(p)); no reference.
- SimPO (Meng et al. 2024): -log sigmoid(beta (avg log pi(c) - avg log pi(r)) - gamma) (with label
  smoothing as DPO's); no reference.
- KTO (Ethayarajh et al. 2024): z = max(0, mean over the batch of log pi(y'|x) - log ref(y'|x)) on
  mismatched prompt/answer rows, without gradient; a desirable answer costs w_d (1 - sigmoid(beta (r - z))),
  an undesirable one w_u (1 - sigmoid(beta (z - r))), with r = log pi(y|x) - log ref(y|x).

Each returns per-example losses and rewards; the method sums them (the driver divides by the count).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tuneforge.data.batching import WIDTH_MULTIPLE
from tuneforge.models.token_loss import IGNORE, last_hidden_state, output_layer


@dataclass
class AnswerLogps:
    """Per row: the summed log-probability of the trained tokens and how many there are; with
    `token_logps` (the full log-softmax of each trained position) when a KL is to be measured."""

    sums: torch.Tensor
    counts: torch.Tensor
    token_logps: torch.Tensor | None = None

    @property
    def means(self) -> torch.Tensor:
        return self.sums / self.counts.clamp(min=1)

    @staticmethod
    def joined(parts: list[AnswerLogps]) -> AnswerLogps:
        """The rows of several parts in order (their trained tokens too, as one batch would list them)."""
        kept = [p.token_logps for p in parts]
        return AnswerLogps(torch.cat([p.sums for p in parts]), torch.cat([p.counts for p in parts]),
                           None if any(k is None for k in kept) else torch.cat(kept))


def answer_logps(model, batch: dict[str, torch.Tensor], keep_distributions: bool = False) -> AnswerLogps:
    """Log-probabilities of each row's trained tokens; the LM head runs on trained positions only."""
    hidden = last_hidden_state(model, batch)
    targets = batch["labels"][:, 1:]
    trained = targets != IGNORE
    logits = output_layer(model)(hidden[:, :-1][trained]).float()
    log_softmax = F.log_softmax(logits, dim=-1)
    picked = log_softmax.gather(1, targets[trained].unsqueeze(1)).squeeze(1)
    rows = torch.arange(targets.size(0), device=targets.device).unsqueeze(1).expand_as(targets)[trained]
    sums = torch.zeros(targets.size(0), dtype=torch.float32, device=targets.device).index_add(0, rows, picked)
    counts = trained.sum(dim=1)
    return AnswerLogps(sums, counts, log_softmax if keep_distributions else None)


def column_logps(model, batch: dict[str, torch.Tensor], keep_distributions: bool,
                 modes: tuple[str, str]) -> AnswerLogps:
    """`answer_logps` of a batch's two columns of rows (chosen and rejected; rated and mismatched) run apart,
    each cut to its own width, the first then the second, in the given modes:

    - "grad": autograd keeps the column's activations for backward;
    - "recompute": it keeps none; backward runs the column again (activation checkpointing);
    - "no_grad": no gradient at all (KTO's mismatched rows: their KL estimate is a constant).

    Why: a DPO-family loss needs of each row only its summed log-probability, so nothing forces both
    columns' activations to be alive at once.  With the first column recomputed, autograd keeps one
    column's activations during the forward, and in backward finishes the second column (created later, so
    first in the engine's order) before it recomputes the first: the peak holds half the activations, for
    one more forward of half the rows (tests/train/test_preference.py measures the gradients equal).
    """
    n = batch["input_ids"].size(0) // 2
    parts = []
    for rows, mode in zip((slice(0, n), slice(n, 2 * n)), modes):
        part = column(batch, rows)
        if mode == "no_grad" or not torch.is_grad_enabled():
            with torch.no_grad():
                parts.append(answer_logps(model, part, keep_distributions))
        elif mode == "recompute":
            from torch.utils.checkpoint import checkpoint

            parts.append(checkpoint(answer_logps, model, part, keep_distributions, use_reentrant=False))
        else:
            parts.append(answer_logps(model, part, keep_distributions))
    return AnswerLogps.joined(parts)


def column(batch: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """The rows' model inputs and labels, without the padding columns none of them uses (rows are right-padded)."""
    mask = batch["attention_mask"][rows]
    used = int(mask.sum(dim=1).max()) if mask.numel() else 0
    width = min(mask.size(1), -(-max(used, 1) // WIDTH_MULTIPLE) * WIDTH_MULTIPLE)
    return {name: batch[name][rows, :width] for name in ("input_ids", "labels", "attention_mask")}


def token_kl(policy: AnswerLogps, reference: AnswerLogps) -> torch.Tensor:
    """KL(policy || reference) per row, averaged over the row's trained tokens (a statistic, no gradient)."""
    with torch.no_grad():
        p, q = policy.token_logps, reference.token_logps
        per_token = (p.exp() * (p - q)).sum(dim=-1)
        rows = torch.repeat_interleave(torch.arange(len(policy.counts), device=p.device), policy.counts)
        sums = torch.zeros(len(policy.counts), device=p.device).index_add(0, rows, per_token)
        return sums / policy.counts.clamp(min=1)


@dataclass
class PairLosses:
    losses: torch.Tensor  # per pair, differentiable
    chosen_rewards: torch.Tensor  # per pair, detached
    rejected_rewards: torch.Tensor


def dpo(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
        beta: float, label_smoothing: float = 0.0) -> PairLosses:
    """Sigmoid DPO on summed log-probabilities, with conservative-DPO label smoothing."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    h = beta * (chosen_ratio - rejected_ratio)
    losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    return PairLosses(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def ipo(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
        beta: float) -> PairLosses:
    """IPO on per-token average log-probabilities (pass means, not sums)."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    losses = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    return PairLosses(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def log1m_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and far below it."""
    return torch.where(x > -0.693, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float) -> PairLosses:
    """ORPO on per-token average log-probabilities: the chosen NLL plus beta times the odds-ratio term."""
    log_odds = (chosen_mean - rejected_mean) - (log1m_exp(chosen_mean) - log1m_exp(rejected_mean))
    losses = -chosen_mean - beta * F.logsigmoid(log_odds)
    return PairLosses(losses, beta * chosen_mean.detach(), beta * rejected_mean.detach())


def simpo(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float, gamma: float,
          label_smoothing: float = 0.0) -> PairLosses:
    """SimPO on per-token average log-probabilities, with a target margin gamma."""
    h = beta * (chosen_mean - rejected_mean) - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    return PairLosses(losses, beta * chosen_mean.detach(), beta * rejected_mean.detach())


def kto(policy: torch.Tensor, reference: torch.Tensor, kl_policy: torch.Tensor, kl_reference: torch.Tensor,
        desirable: torch.Tensor, weights: torch.Tensor, beta: float, desirable_weight: float,
        undesirable_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-example losses, rewards, the KL estimate z) for rated answers; `weights` zero out idle rows."""
    counted = weights > 0
    z = ((kl_policy - kl_reference)[counted].mean() if counted.any() else kl_policy.sum() * 0).detach().clamp(min=0)
    ratio = policy - reference
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - z)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z - ratio)))
    return torch.where(desirable, good, bad), beta * ratio.detach(), z
