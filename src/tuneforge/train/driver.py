"""The step driver: one training loop for every method (forward, loss, backward, update; evaluate,
checkpoint, resume, stop on signals).

Read it top to bottom like nanoGPT's loop: `train()` prepares the run directory, asks the method
(train/methods/) for its data and model, then `for step ...` does one optimizer step over
`grad_accum` micro-batches.  accelerate owns devices, mixed precision and multi-process training;
the driver owns everything a user can observe (order of batches, logged numbers, checkpoints), so
resume is exact; the method owns only what differs between methods (train/method.py).

With N processes (`--nproc N`, `accelerate launch`, `torchrun`) one optimizer step takes
`grad_accum x N` batches of the seeded epoch order and each rank trains its consecutive share
of `grad_accum` of them; the loss is divided by the global count the method counts (trained tokens,
examples), so the update is the one a single process makes with `grad_accum x N`
(tests/train/test_distributed.py).  The checkpoint counts batches of the order, not steps per rank,
so a run resumes on any number of processes where it stopped.  Only rank 0 writes files; the others
wait at a barrier.  Every decision that ends the loop (a signal, a stop callback, early stopping) is
made the same on all ranks, or one would wait forever for the rest.  Per-step losses of every method
are pinned in tests/train/test_pinned_losses.py.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from tuneforge.config import RunConfig, dump_config
from tuneforge.train import checkpoint as ckpt
from tuneforge.train import preflight
from tuneforge.train.checkpoint import TrainState
from tuneforge.train.distributed import (
    any_rank, from_main, full_state_dict, gather_object, is_fsdp, make_accelerator, rank_share,
)
from tuneforge.train.method import PRIMARY, Method, StepPlan, compose
from tuneforge.train.methods import method_for
from tuneforge.evaluate.run_metrics import read_metrics
from tuneforge.train.metrics import MetricsLog, plot_losses
from tuneforge.train.progress import TrainProgress
from tuneforge.train.run_dir import prepare_run_dir
from tuneforge.train.selection import BestCheckpoint, metric_key
from tuneforge.train.setup import build_optimizer, build_scheduler, seed_everything, total_steps
from tuneforge.train.signals import stop_on_signals


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainState
    total_steps: int
    interrupted_by: str | None  # signal name, or "stop" for a programmatic stop; None when finished
    eval_loss_before: float | None
    eval_loss_after: float | None
    outcome: Any = None  # what the method's finish() returned (a classifier's held-out scores)


@dataclass
class StepFigures:
    """One optimizer step's figures, all ranks together: loss terms and statistics per counted unit."""

    values: dict[str, float]
    grad_norm: float
    tokens: int


def train(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    stop: Callable[[TrainState], bool] | None = None,
    on_eval: Callable[[int, float], bool] | None = None,
) -> TrainResult:
    """Run (or resume) a fine-tune with the method its run file names.  `stop(state)` after each step and
    `on_eval(step, eval_loss)` after each periodic validation may return True to end the run early with a
    checkpoint (a hyperparameter search prunes trials through `on_eval`); `interrupted_by` is then "stop"."""
    cfg = config.train
    kind = method_for(config)
    accelerator = make_accelerator(cfg.distributed, kind.autocast(config))
    main = accelerator.is_main_process
    console = (console or Console(stderr=True)) if main else Console(quiet=True)
    run_dir = config.output_dir
    checkpoint = prepare_run_dir(run_dir, resume, overwrite, accelerator)
    if resume and checkpoint is None:
        console.print(f"no checkpoint in {run_dir}; starting from step 0")
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)

    method = kind.build(config, accelerator, console)
    model = method.load(checkpoint)
    if main:
        (run_dir / "config.yaml").write_text(dump_config(config))
    method.before_training(model, resuming=checkpoint is not None)

    batches_per_epoch = len(method.epoch_order(cfg.batch_size, cfg.seed, 0))
    batches_per_step = cfg.grad_accum * accelerator.num_processes
    steps = total_steps(cfg.model_copy(update={"grad_accum": batches_per_step}), batches_per_epoch)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    state = ckpt.read_state(checkpoint) if checkpoint else TrainState()
    plan = None
    if cfg.preflight != "off" and state.step < steps:
        plan = method.preflight(model, state, StepPlan(batches_per_epoch, batches_per_step, steps))
        if plan is not None and main:
            plan.write(run_dir)
    model, optimizer = accelerator.prepare(model, optimizer)
    if checkpoint:
        state = ckpt.load_training_state(checkpoint, optimizer, scheduler, accelerator.process_index,
                                         model if is_fsdp(accelerator) else None)
        console.print(f"resuming from {checkpoint} (step {state.step}/{steps})")
    metrics = MetricsLog(run_dir, resume_step=state.step if checkpoint else None) if main else NoMetrics()
    best = BestCheckpoint.read(ckpt.checkpoint_root(run_dir), metric_key(config.eval.best_metric),
                               config.eval.early_stopping_patience)

    def validate(answers: bool) -> dict[str, float]:
        """Rank 0's figures on every rank: decisions taken on them must agree."""
        return from_main(accelerator, method.validate(model, answers))

    def save() -> None:
        save_checkpoint(run_dir, state, model, method, optimizer, scheduler, config.checkpoint.keep_last, accelerator)

    def evaluated(values: dict[str, float]) -> None:
        """Log an evaluation and keep the checkpoint if it is the best so far."""
        metrics.log(state.step, **values)
        if best.improved(state.step, values):
            save()
            if main:
                best.write(ckpt.checkpoint_root(run_dir), ckpt.checkpoint_name(state.step))

    if state.step == 0:
        before = validate(answers=False)
        if before:
            metrics.log(0, **before)
            if "eval_loss" in before:
                console.print(f"validation loss before training: {before['eval_loss']:.4f}")

    model.train()
    progress = TrainProgress(steps, state.step, console)
    interrupted_by = None
    started, tokens_at_start = time.monotonic(), state.tokens_seen
    with stop_on_signals() as signal_stop:
        while state.step < steps:
            order = method.epoch_order(cfg.batch_size, cfg.seed, state.epoch)
            window = order[state.batch_in_epoch : state.batch_in_epoch + batches_per_step]
            if not window:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                continue
            share = rank_share(window, accelerator.process_index, cfg.grad_accum)
            micro_batches = [method.batch(ids) for ids in share] or [method.idle(method.batch(window[0]))]
            figures = optimizer_step(method, model, optimizer, micro_batches, accelerator, cfg.max_grad_norm)
            scheduler.step()
            state.step += 1
            state.batch_in_epoch += len(window)
            state.tokens_seen += figures.tokens
            speed = (state.tokens_seen - tokens_at_start) / max(time.monotonic() - started, 1e-9)
            if state.step % cfg.log_every == 0 or state.step == steps:
                metrics.log(state.step, **{f"train_{name}": value for name, value in figures.values.items()},
                            train_lr=scheduler.get_last_lr()[0], train_grad_norm=figures.grad_norm,
                            train_tokens_per_s=speed, train_epoch=state.epoch + state.batch_in_epoch / batches_per_epoch)
            progress.update(state.step, figures.values[PRIMARY], speed)
            if evaluation_due(config, method, state, len(order)) and state.step < steps:
                values = validate(answers=True)
                if values:
                    evaluated(values)
                    if on_eval and "eval_loss" in values and on_eval(state.step, values["eval_loss"]):
                        interrupted_by = "stop"
                        break
                    if best.exhausted():
                        console.print(f"early stop at step {state.step}: {best.metric} has not improved in "
                                      f"{best.evals_without_gain} evaluations (best {best.value:.4g} at step {best.step})")
                        break
            every = config.checkpoint.every_steps
            if every and state.step % every == 0 and state.step < steps:
                save()
            if any_rank(accelerator, bool(signal_stop) or bool(stop and stop(state))):
                interrupted_by = signal_stop.signal_name or "stop"
                break
    progress.close()
    if plan is not None:
        preflight.record_peak(plan, accelerator, run_dir, state.tokens_seen - tokens_at_start, started)

    if interrupted_by:
        save()
        metrics.close()
        return TrainResult(run_dir, state, steps, interrupted_by, first_eval_loss(run_dir), None)

    after = validate(answers=False)
    if after:
        evaluated(after)
    save()
    weights = full_state_dict(accelerator, model)
    if not main:
        return TrainResult(run_dir, state, steps, None, None, after.get("eval_loss"))
    save_final(run_dir, method, accelerator.unwrap_model(model), weights)
    metrics.close()
    plot_losses(run_dir)
    if best.step is not None:
        console.print(f"best checkpoint by {best.metric}: step {best.step} ({best.value:.4g}): "
                      f"{ckpt.checkpoint_root(run_dir) / ckpt.checkpoint_name(best.step)}")
    eval_loss = (first_eval_loss(run_dir), after.get("eval_loss"))
    outcome = method.finish(accelerator.unwrap_model(model), eval_loss)
    return TrainResult(run_dir, state, steps, None, *eval_loss, outcome)


def evaluation_due(config: RunConfig, method: Method, state: TrainState, batches_in_epoch: int) -> bool:
    """Every eval.every_steps steps; without it, at each epoch's end for a method that evaluates per epoch."""
    every = config.eval.every_steps
    if every:
        return state.step % every == 0
    return method.evaluates_each_epoch and state.batch_in_epoch >= batches_in_epoch


class NoMetrics:
    """What ranks other than 0 log into: only rank 0 writes metrics.jsonl and TensorBoard."""

    def log(self, step: int, **values: float) -> None:
        pass

    def close(self) -> None:
        pass


def optimizer_step(method: Method, model, optimizer, micro_batches, accelerator, max_grad_norm) -> StepFigures:
    """One update over this rank's micro-batches: each loss term summed, divided once by the global count."""
    device = accelerator.device
    micro_batches = [{k: v.to(device) for k, v in b.items()} for b in micro_batches]
    local = torch.tensor([sum(method.count(b) for b in micro_batches), sum(method.tokens(b) for b in micro_batches)],
                         device=device)
    # Every process divides by the global count; DDP averages gradients, hence * num_processes.
    global_count, global_tokens = accelerator.reduce(local, reduction="sum").tolist()
    scale = accelerator.num_processes / max(global_count, 1)
    totals: dict[str, float] = {}
    for index, batch in enumerate(micro_batches):
        sync = index == len(micro_batches) - 1
        with nullcontext() if sync else accelerator.no_sync(model), accelerator.autocast():
            result = method.loss_terms(model, batch)
            loss = compose(result.terms, method.weights) * scale
        accelerator.backward(loss)
        for name, value in [*((n, v.item()) for n, v in result.terms.items()), *result.stats.items()]:
            totals[name] = totals.get(name, 0.0) + value * scale
    parameters = list(model.parameters())  # all of them: FSDP computes the global norm only over the whole model
    if max_grad_norm:
        grad_norm = float(accelerator.clip_grad_norm_(parameters, max_grad_norm))
    else:
        grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None])))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepFigures(mean_over_ranks(totals, accelerator), grad_norm, int(global_tokens))


def mean_over_ranks(totals: dict[str, float], accelerator) -> dict[str, float]:
    """Each rank's share was scaled by num_processes / global count: the sum over ranks / processes is the mean."""
    processes = accelerator.num_processes
    names = list(totals)
    sums = torch.tensor([totals[n] for n in names], dtype=torch.float64, device=accelerator.device) / processes
    return dict(zip(names, (accelerator.reduce(sums, reduction="sum") if processes > 1 else sums).tolist()))


def save_checkpoint(run_dir, state, model, method: Method, optimizer, scheduler, keep_last: int, accelerator) -> None:
    """A checkpoint that any number of processes can resume: rank 0 writes the full weights, optimizer
    and scheduler states, and every rank's RNG state; the others wait until it is complete."""
    rng = gather_object([ckpt.rng_states()], accelerator)
    weights = full_state_dict(accelerator, model)
    optimizer_state = ckpt.full_optimizer_state(model, optimizer) if is_fsdp(accelerator) else None
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        ckpt.save_checkpoint(
            run_dir, state, lambda directory: method.save_model(unwrapped, directory, weights), optimizer, scheduler,
            keep_last, rng=rng, optimizer_state=optimizer_state,
        )
    accelerator.wait_for_everyone()


def save_final(run_dir: Path, method: Method, model, weights: dict | None = None) -> None:
    tmp, final = run_dir / ".final.tmp", run_dir / "final"
    shutil.rmtree(tmp, ignore_errors=True)
    method.save_model(model, tmp, weights)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def first_eval_loss(run_dir: Path) -> float | None:
    return next((r["eval_loss"] for r in read_metrics(run_dir) if "eval_loss" in r), None)
