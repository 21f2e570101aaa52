"""What a training method is to the step driver: a small object behind a Protocol, and its loss terms.

The driver (train/driver.py) owns everything every method shares: the epoch order, accumulation,
the optimizer and schedule, checkpoints, evaluation cadence, best checkpoint, early stopping,
signals, resume and agreement across processes.  A method owns only what differs: its data and
model, how a micro-batch is built, the loss terms of one micro-batch, how it validates, how its
model is saved, and what it reports at the end.  Supervised fine-tuning, continued pretraining and
classification are such objects (train/methods/); a new method is one more, with no new loop.

Loss terms are sums over what the method counts (trained tokens for a language model, examples for
a classifier), so the driver divides once by the window's global count and every counted unit weighs
the same whatever the batch size, accumulation or process count.  `compose` is the one place terms
become the loss that is differentiated: the driver's step and the pre-flight probe both call it
(tests/train/test_method.py pins it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

Batch = dict[str, torch.Tensor]
PRIMARY = "loss"  # the term logged as train_loss and shown on the progress bar


@dataclass
class LossTerms:
    """One micro-batch's named loss terms (summed, differentiable) and statistics (summed floats, logged as
    train_<name> per counted unit, never differentiated)."""

    terms: dict[str, torch.Tensor]
    stats: dict[str, float] = field(default_factory=dict)


def compose(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """The loss that is differentiated: each named term times its weight, added.

    A term without a weight is a mistake in the method, not a term to skip: it raises."""
    missing = set(terms) - set(weights)
    if missing:
        raise KeyError(f"loss terms without a weight: {sorted(missing)}")
    return sum(weights[name] * value for name, value in terms.items())


def batch_loss(method: Method, model: torch.nn.Module) -> Callable[[Batch], torch.Tensor]:
    """The loss the step differentiates for one batch, moved to the method's device and under its autocast:
    what the pre-flight probe measures and times, so the estimate follows the real step."""
    device = method.accelerator.device

    def loss(batch: Batch) -> torch.Tensor:
        batch = {k: v.to(device) for k, v in batch.items()}
        with method.accelerator.autocast():
            return compose(method.loss_terms(model, batch).terms, method.weights)

    return loss


@dataclass(frozen=True)
class StepPlan:
    """How the epoch order is cut into optimizer steps (the pre-flight time estimate needs it)."""

    batches_per_epoch: int
    batches_per_step: int  # of the epoch order, all ranks together
    total_steps: int


class Method(Protocol):
    """One way to train a model, as the step driver sees it.

    Attributes the driver reads: `weights` (loss term -> weight; the term "loss" is train_loss),
    `evaluates_each_epoch` (validate at each epoch's end when eval.every_steps is unset),
    `tokenizer` (saved with every checkpoint), `accelerator` (the probe's device and autocast: batch_loss).
    """

    weights: Mapping[str, float]
    evaluates_each_epoch: bool
    accelerator: Any  # the run's accelerate.Accelerator: its device and autocast

    def load(self, checkpoint: Path | None) -> torch.nn.Module:
        """Read and validate the data (before any weights load: bad data fails in seconds), then build the
        model to train, from `checkpoint` when resuming."""
        ...

    def before_training(self, model: torch.nn.Module, resuming: bool) -> None:
        """What must be measured on the untrained model (base answers, base scores) and the training mix."""
        ...

    def epoch_order(self, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
        """The epoch's batches of training units, deterministic per (seed, epoch) so resume is exact.  Most
        methods group units of similar length (data/batching.py's epoch_batches); GRPO repeats each
        generation batch num_iterations times, one update per repeat."""
        ...

    def batch(self, units: list[int]) -> Batch:
        """The micro-batch of these training units, as CPU tensors."""
        ...

    def idle(self, batch: Batch) -> Batch:
        """The batch made to train nothing: a rank left without data still joins the gradient all-reduce."""
        ...

    def count(self, batch: Batch) -> int:
        """What the loss terms are summed over (trained tokens, examples): the driver divides by its total."""
        ...

    def tokens(self, batch: Batch) -> int:
        """Tokens the batch puts through the model (the speed figure)."""
        ...

    def loss_terms(self, model: torch.nn.Module, batch: Batch) -> LossTerms:
        """One micro-batch's loss terms, summed over its counted units."""
        ...

    def validate(self, model: torch.nn.Module, answers: bool) -> dict[str, float]:
        """eval_* values on held-out data; `answers=False` skips what needs generation (start and end of a run)."""
        ...

    def preflight(self, model: torch.nn.Module, state: Any, plan: StepPlan) -> Any:
        """The memory and time estimate before step 1, or None for a method without one."""
        ...

    def save_model(self, model: torch.nn.Module, directory: Path, weights: dict | None) -> None:
        """Write the model (an adapter or full weights) and what loads it; `weights`: FSDP's gathered whole."""
        ...

    def finish(self, model: torch.nn.Module, eval_loss: tuple[float | None, float | None]) -> Any:
        """After the last step, on rank 0: the run's before-vs-after report; returns what callers may use."""
        ...
