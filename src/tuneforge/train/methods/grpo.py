"""GRPO on the step driver (task: grpo): the model learns from its own sampled answers, scored by rewards.

For each micro-batch of prompts the current policy samples a group of G answers per prompt
(models/rollout.py: the continuous-batching decoding core that `tuneforge serve` runs, on the policy's
own weights, the LoRA adapter active, rows leaving as they finish; with LoRA on a CPU the frozen base
packed once for decoding, models/packed_base.py), the rewards score them (evaluate/rewards.py), and each answer's advantage is its reward
against its group's (train/policy_loss.py).  The loss terms are the clipped policy-gradient objective
summed over answer tokens and, with grpo.beta > 0, the k3 KL to the reference: the same network with
its adapter switched off (peft's disable_adapter), no second copy.  The driver divides by the step's
answer tokens, so the loss is normalised per token across the group (DAPO / Dr. GRPO).

Several updates per generated batch (grpo.num_iterations): `epoch_order` repeats each block of
micro-batches (one optimizer step's worth) num_iterations times, and `batch` keeps the block's
rollouts, with their log-probabilities under the policy that sampled them ("old"), until each has
been trained on that many times.  With one iteration the old log-probs equal the current ones
(ratio 1, detached), as in TRL, and are not computed twice.

Statistics per step (logged as train_<name>): each reward's mean and std, the total's, the share of
groups with no signal (every answer scored the same: advantages 0), answer length, the share of
answers cut at max_new_tokens, clip fraction and KL.  Held-out prompts are answered greedily before
and after training and scored with the same rewards (evaluate/reward_eval.py), beside the
general-ability check shared with SFT (train/methods/general_check.py); the curves go to reward_curves.png.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from tuneforge.config import RunConfig
from tuneforge.data.batching import WIDTH_MULTIPLE
from tuneforge.data.prompts import held_out, messages, read_prompts
from tuneforge.evaluate import before_after
from tuneforge.evaluate.reward_eval import evaluate_rewards, heldout_file, read_base, write_base
from tuneforge.evaluate.rewards import Scores, load_rewards, score
from tuneforge.models.generate import Sampling
from tuneforge.models.packed_base import PackedBase, pack_frozen_base
from tuneforge.models.rollout import Rollout, sample_groups
from tuneforge.models.tokenizer import training_tokenizer
from tuneforge.train import checkpoint as ckpt
from tuneforge.train.method import PRIMARY, Batch, LossTerms, StepPlan
from tuneforge.train.metrics import plot_rewards
from tuneforge.train.methods.general_check import check_base, check_tuned
from tuneforge.train.methods.language_model import untouched
from tuneforge.train.policy_loss import answer_log_probs, clipped_objective, group_advantages
from tuneforge.train.setup import build_model


@dataclass
class Generated:
    """One micro-batch's rollouts as tensors, and how many updates have used them."""

    batch: Batch
    uses: int = 0


class GRPOMethod:
    evaluates_each_epoch = False

    def __init__(self, config: RunConfig, accelerator, console: Console):
        self.config, self.accelerator, self.console = config, accelerator, console
        self.settings = config.grpo
        self.weights = {PRIMARY: 1.0, **({"kl": self.settings.beta} if self.settings.beta > 0 else {})}
        self.run_dir = config.output_dir
        self.rewards = load_rewards(config.rewards)  # a bad reference fails before any model loads
        self.stat_names = ["reward", "reward_std", *[f"reward_{r.name}{s}" for r in self.rewards for s in ("", "_std")],
                           "no_signal_groups", "completion_length", "truncated", "generated_tokens_per_s"]
        self.sets = before_after.probe_sets(config.eval)
        self.general_text = before_after.general_text(config.eval)
        self.generated: dict[tuple[int, ...], Generated] = {}
        self.groups, self.silent_groups = 0, 0  # groups sampled, and those whose answers all scored the same
        self.packed: PackedBase | None | bool = False  # False: not tried yet

    # --- data and model -----------------------------------------------------------------------------

    def load(self, checkpoint: Path | None) -> torch.nn.Module:
        data, seed = self.config.data, self.config.train.seed
        rows = read_prompts(data.train)  # before the model: bad records fail in seconds
        heldout = read_prompts(data.validation) if data.validation else []
        if not heldout:
            rows, heldout = held_out(rows, data.val_split, seed)
        self.rows, self.heldout = rows, heldout[: self.settings.eval_max_prompts]
        with self.accelerator.main_process_first():
            self.tokenizer, self.stop_ids = training_tokenizer(self.config.model.name, data.template)
        model, self.info, self.base_dir = build_model(self.config, self.accelerator.device, checkpoint)
        self.model = model
        return model

    def before_training(self, model, resuming: bool) -> None:
        """The base model's held-out rewards, probe answers and general-text perplexity, once, by rank 0."""
        config = self.config
        if self.accelerator.is_main_process:
            with untouched(model, trained=resuming, adapter_is_start=config.model.init_from is None) as base:
                check_base(self.sets, self.general_text, self.run_dir, resuming, base, self.tokenizer, self.base_dir,
                           config.eval)
                if self.heldout and base is not None and not (resuming and read_base(self.run_dir)):
                    self.console.print(f"base model on {len(self.heldout)} held-out prompts ...")
                    write_base(self.run_dir, self.evaluate(base, heldout_file(self.run_dir, "base")))
        self.accelerator.wait_for_everyone()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.console.print(f"data: {len(self.rows)} training prompts, {len(self.heldout)} held out; "
                           f"{self.settings.num_generations} answers per prompt; rewards: "
                           + ", ".join(f"{r.name} x{r.weight:g}" for r in self.rewards)
                           + f"; trainable parameters: {trainable:,}")

    def evaluate(self, model, path: Path | None):
        s = self.settings
        return evaluate_rewards(model, self.tokenizer, self.heldout, self.rewards, s.max_new_tokens, s.pass_threshold,
                                s.reward_timeout_s, path)

    # --- batches and loss ---------------------------------------------------------------------------

    def epoch_order(self, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
        """Shuffled prompts in micro-batches; each step's block of micro-batches repeated num_iterations times."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.rows), generator=generator).tolist()
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        block = self.config.train.grad_accum * self.accelerator.num_processes
        repeated = []
        for start in range(0, len(batches), block):
            repeated += batches[start : start + block] * self.settings.num_iterations
        return repeated

    def batch(self, units: list[int]) -> Batch:
        key = tuple(units)
        if key not in self.generated:
            self.generated[key] = Generated(self.rollout(units))
        generated = self.generated[key]
        generated.uses += 1
        if generated.uses >= self.settings.num_iterations:
            del self.generated[key]
        return generated.batch

    def rollout(self, units: list[int]) -> Batch:
        """Sample, score and turn into tensors the groups of these prompts; old and reference log-probs."""
        s, tokenizer, model = self.settings, self.tokenizer, self.model
        rows = [self.rows[i] for i in units]
        started = time.monotonic()
        model.eval()
        with self.packed_base(), self.accelerator.autocast():
            groups = sample_groups(model, tokenizer, [messages(r) for r in rows], s.num_generations,
                                   Sampling(s.max_new_tokens, s.temperature, s.top_p), s.generation_batch_size)
        seconds = time.monotonic() - started
        answers = [r for group in groups for r in group]
        texts = [tokenizer.decode(r.completion_ids, skip_special_tokens=True).strip() for r in answers]
        scores = score(self.rewards, [row for row in rows for _ in range(s.num_generations)], texts,
                       [r.completion_ids for r in answers], s.reward_timeout_s)
        totals = torch.tensor(scores.total, dtype=torch.float32).view(len(rows), s.num_generations)
        advantages, no_signal = group_advantages(totals, s.scale_rewards)
        self.groups, self.silent_groups = self.groups + len(rows), self.silent_groups + int(no_signal.sum())
        batch = rollout_tensors(answers, advantages.flatten(), tokenizer.pad_token_id)
        batch["rollout_stats"] = torch.tensor(self.rollout_stats(scores, no_signal, answers, seconds),
                                              dtype=torch.float64)
        device = self.accelerator.device
        with torch.no_grad(), self.accelerator.autocast():
            on_device = {k: v.to(device) for k, v in batch.items()}
            if s.num_iterations > 1:
                batch["old_logp"] = spread(answer_log_probs(model, on_device), batch["completion_mask"])
            if s.beta > 0:
                with model.disable_adapter():
                    batch["ref_logp"] = spread(answer_log_probs(model, on_device), batch["completion_mask"])
        model.train()
        return batch

    def packed_base(self) -> AbstractContextManager:
        """The frozen base packed for decoding (models/packed_base.py), packed at the first rollout; or nothing."""
        if self.packed is False:
            self.packed = pack_frozen_base(self.model) if self.settings.pack_for_generation else None
        return self.packed.swapped() if self.packed else nullcontext()

    def rollout_stats(self, scores: Scores, no_signal: torch.Tensor, answers: list[Rollout], seconds: float) -> list[float]:
        def mean_std(values: list[float | None]) -> list[float]:
            known = torch.tensor([v for v in values if v is not None] or [0.0], dtype=torch.float64)
            return [float(known.mean()), float(known.std(correction=0))]

        generated = sum(len(a.completion_ids) for a in answers)
        return [*mean_std(scores.total), *[x for r in self.rewards for x in mean_std(scores.per_reward[r.name])],
                float(no_signal.float().mean()), generated / len(answers),
                sum(not a.finished for a in answers) / len(answers), generated / max(seconds, 1e-9)]

    def idle(self, batch: Batch) -> Batch:
        return {**batch, "completion_mask": torch.zeros_like(batch["completion_mask"])}

    def count(self, batch: Batch) -> int:
        return int(batch["completion_mask"].sum())

    def tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())

    def loss_terms(self, model, batch: Batch) -> LossTerms:
        s = self.settings
        logp = answer_log_probs(model, batch)
        targets = batch["completion_mask"][:, 1:].bool()
        rows = torch.arange(len(targets), device=targets.device).unsqueeze(1).expand_as(targets)[targets]
        old = batch["old_logp"][:, 1:][targets] if "old_logp" in batch else logp.detach()
        reference = batch["ref_logp"][:, 1:][targets] if "ref_logp" in batch else None
        parts = clipped_objective(logp, old, batch["advantages"][rows], s.epsilon, reference)
        terms = {PRIMARY: parts.policy, **({"kl": parts.kl} if s.beta > 0 else {})}
        counted = self.count(batch)  # a rollout statistic times the count: the driver's division gives it back
        stats = {name: value * counted for name, value in zip(self.stat_names, batch["rollout_stats"].tolist())}
        return LossTerms(terms, {"clip_fraction": parts.clipped, **stats})

    # --- evaluation, saving, report -----------------------------------------------------------------

    def validate(self, model, answers: bool) -> dict[str, float]:
        """Held-out mean reward and pass rate (greedy answers), at eval.every_steps; nothing at start and end
        (before_training and finish measure those)."""
        if not answers or not self.heldout or not self.accelerator.is_main_process:
            return {}
        result = self.evaluate(self.accelerator.unwrap_model(model), None)
        return {"eval_reward": result.mean_reward, "eval_pass_rate": result.pass_rate}

    def preflight(self, model, state, plan: StepPlan):
        return None  # generation dominates a GRPO step; the SFT estimate does not model it

    def save_model(self, model, directory: Path, weights: dict | None) -> None:
        ckpt.save_model(model, self.tokenizer, self.info, directory, weights)

    def finish(self, model, eval_loss: tuple[float | None, float | None]):
        """Held-out rewards of the tuned model beside the base's; the general check; the summary table."""
        plot_rewards(self.run_dir, [r.name for r in self.rewards])
        if self.groups:
            self.console.print(f"groups with no signal (every answer scored the same, advantages 0): "
                               f"{self.silent_groups} of {self.groups} ({self.silent_groups / self.groups:.0%}); "
                               "train_no_signal_groups in metrics.jsonl has them per step")
        model.eval()
        measures: dict[str, tuple[float | None, float | None]] = {}
        base = read_base(self.run_dir)
        if self.heldout:
            after = self.evaluate(model, heldout_file(self.run_dir, "tuned"))
            if base:
                measures["held-out mean reward"] = (base["mean_reward"], after.mean_reward)
                measures["held-out pass rate"] = (base["pass_rate"], after.pass_rate)
                for name, value in after.per_reward.items():
                    measures[f"held-out reward {name}"] = (base["per_reward"].get(name), value)
        return check_tuned(self.console, self.sets, self.general_text, self.run_dir, model, self.tokenizer,
                           self.config.eval, measures)


def rollout_tensors(answers: list[Rollout], advantages: torch.Tensor, pad_id: int) -> Batch:
    """Prompt + answer per row, right-padded to a multiple of WIDTH_MULTIPLE; completion_mask marks answer tokens."""
    lengths = [len(a.prompt_ids) + len(a.completion_ids) for a in answers]
    width = -(-max(lengths) // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    input_ids = torch.full((len(answers), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(answers), width), dtype=torch.long)
    completion_mask = torch.zeros((len(answers), width), dtype=torch.long)
    for row, answer in enumerate(answers):
        prompt, n = len(answer.prompt_ids), lengths[row]
        input_ids[row, :n] = torch.tensor(answer.prompt_ids + answer.completion_ids)
        attention_mask[row, :n] = 1
        completion_mask[row, prompt:n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
            "advantages": advantages.float()}


def spread(values: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Flat per-answer-token values laid out on the batch's (rows, width) grid, 0 elsewhere (on the CPU)."""
    grid = torch.zeros(completion_mask.shape, dtype=torch.float32)
    grid[completion_mask.bool()] = values.float().cpu()
    return grid


def closing(result) -> list[str]:
    """What `tuneforge train` prints after a finished GRPO run: held-out reward and pass rate, before -> after."""
    lines = []
    measures = result.outcome.measures if result.outcome is not None else {}
    for label in ("held-out mean reward", "held-out pass rate"):
        if label in measures and None not in measures[label]:
            before, after = measures[label]
            lines.append(f"{label}: before {before:.3f} -> after {after:.3f}")
    return [*lines, f"talk to it: tuneforge chat {result.run_dir}"]
