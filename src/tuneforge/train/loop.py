"""The training loop: forward, loss, backward, update; evaluate, checkpoint, resume, stop on signals.

Read it top to bottom like nanoGPT's: `train()` prepares a run directory, the model and the
data, then `for step ...` does one optimizer step over `grad_accum` micro-batches.  accelerate
owns devices, mixed precision and multi-process training; the loop owns everything a user can
observe (order of batches, logged numbers, checkpoints), so resume is exact.

With N processes (`--nproc N`, `accelerate launch`, `torchrun`) one optimizer step takes
`grad_accum x N` batches of the seeded epoch order and each rank trains its consecutive share
of `grad_accum` of them; the loss is divided by the global count of trained tokens, so the
update is the one a single process makes with `grad_accum x N` (tests/train/test_distributed.py).
The checkpoint counts batches of the order, not steps per rank, so a run resumes on any
number of processes where it stopped.  Only rank 0 writes files; the others wait at a barrier
and read what it wrote (the replay mix).  Every decision that ends the loop (a signal, a stop
callback, early stopping) is made the same on all ranks, or one would wait forever for the rest.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from tuneforge.config import RunConfig, dump_config
from tuneforge.data.batching import WIDTH_MULTIPLE, collate, epoch_batches
from tuneforge.data.dataset import label_count
from tuneforge.data.packing import collate_packed, pack
from tuneforge.data.prepare import PreparedData, prepare
from tuneforge.data.replay import encode_mix, replay_mix
from tuneforge.evaluate import before_after
from tuneforge.evaluate.evaluator import forgetting_warning
from tuneforge.evaluate.loss import validation_loss
from tuneforge.models.limits import check_max_seq_length
from tuneforge.models.tokenizer import training_tokenizer
from tuneforge.train import checkpoint as ckpt
from tuneforge.train import preflight, pretrain
from tuneforge.train.checkpoint import TrainState
from tuneforge.train.distributed import (
    any_rank, from_main, full_state_dict, gather_object, is_fsdp, make_accelerator, rank_share, trains_nothing,
)
from tuneforge.train.loss import loss_sum
from tuneforge.train.metrics import MetricsLog, plot_losses, read_metrics
from tuneforge.train.progress import TrainProgress
from tuneforge.train.run_dir import prepare_run_dir
from tuneforge.train.selection import BestCheckpoint, answer_metrics, metric_key, validation_examples
from tuneforge.train.setup import build_model, build_optimizer, build_scheduler, seed_everything, total_steps
from tuneforge.train.signals import stop_on_signals


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainState
    total_steps: int
    interrupted_by: str | None  # signal name, or "stop" for a programmatic stop; None when finished
    eval_loss_before: float | None
    eval_loss_after: float | None


def train(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    stop: Callable[[TrainState], bool] | None = None,
    on_eval: Callable[[int, float], bool] | None = None,
) -> TrainResult:
    """Run (or resume) a fine-tune.  `stop(state)` after each step and `on_eval(step, eval_loss)` after
    each periodic validation may return True to end the run early with a checkpoint (a hyperparameter
    search prunes trials through `on_eval`); the result's `interrupted_by` is then "stop"."""
    cfg = config.train
    accelerator = make_accelerator(cfg.distributed, config.model.dtype)
    main, rank, processes = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    console = (console or Console(stderr=True)) if main else Console(quiet=True)
    run_dir = config.output_dir
    checkpoint = prepare_run_dir(run_dir, resume, overwrite, accelerator)
    if resume and checkpoint is None:
        console.print(f"no checkpoint in {run_dir}; starting from step 0")
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)

    # Data first, with the tokenizer alone: a bad record stops the run before the model loads.  Rank 0
    # fills the caches (an imported model, tokenized data) before the other ranks read them.
    with accelerator.main_process_first():
        check_max_seq_length(config.model.name, cfg.max_seq_length)
        tokenizer, stop_ids = training_tokenizer(config.model.name, config.data.template)
        data = prepare(config.data, tokenizer, stop_ids, cfg.max_seq_length, cfg.seed)
    if config.task == "pretrain":
        pretrain.require_text(data.manifest)
    model, info, base_dir = build_model(config, accelerator.device, checkpoint)
    if main:
        (run_dir / "config.yaml").write_text(dump_config(config))
    sets = before_after.probe_sets(config.eval, replies=config.task == "chat")
    general_text = before_after.general_text(config.eval)
    resuming = checkpoint is not None  # only then are the replay mix and base answers in run_dir reused
    mix = None
    if main:  # the base model's answers are generated once, by rank 0
        if config.data.replay or sets:
            console.print("base-model answers for replay and checks (generated once, then cached) ...")
        with untouched(model, trained=resuming, adapter_is_start=config.model.init_from is None) as base:
            if config.data.replay:
                mix = replay_mix(config.data.replay, len(data.train), cfg.seed, run_dir, resuming, base, tokenizer,
                                 base_dir)
            for probe_set in sets:
                before_after.answer_with_base(
                    probe_set, run_dir, resuming, base, tokenizer, base_dir, config.eval.max_new_tokens
                )
            before_after.perplexity_with_base(run_dir, resuming, base, tokenizer, general_text, config.eval.batch_size)
    accelerator.wait_for_everyone()
    if config.data.replay:
        if mix is None:  # rank 0 saved the mix in run_dir: the other ranks read that file
            mix = replay_mix(config.data.replay, len(data.train), cfg.seed, run_dir, True, None, tokenizer, base_dir)
        add_replay(data, mix, tokenizer, stop_ids, cfg.max_seq_length)
    if main:
        (run_dir / "data_manifest.json").write_text(json.dumps(data.manifest.as_dict(), indent=2))
        if data.directory is not None:
            shutil.copyfile(data.directory / "report.json", run_dir / "data_report.json")
    report_data(console, data, model)

    units, lengths = training_units(data, config.data.packing, cfg.max_seq_length)
    mask_dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    pad_id = tokenizer.pad_token_id

    def batch_of(ids: list[int]) -> dict[str, torch.Tensor]:
        if config.data.packing:
            return collate_packed([[data.train[i] for i in units[u]] for u in ids], pad_id, mask_dtype, WIDTH_MULTIPLE)
        return collate([data.train[i] for i in ids], pad_id, WIDTH_MULTIPLE)

    batches_per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    batches_per_step = cfg.grad_accum * processes  # of the epoch order, all ranks together
    steps = total_steps(cfg.model_copy(update={"grad_accum": batches_per_step}), batches_per_epoch)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    state = ckpt.read_state(checkpoint) if checkpoint else TrainState()
    plan = None
    if cfg.preflight != "off" and state.step < steps:
        plan = preflight.check(config, model, accelerator, console, lengths, batch_of, state, batches_per_epoch,
                               batches_per_step, steps)
        if main:
            plan.write(run_dir)
    model, optimizer = accelerator.prepare(model, optimizer)
    adapter_model = accelerator.unwrap_model(model) if cfg.kl_to_base > 0 else None
    if checkpoint:
        state = ckpt.load_training_state(checkpoint, optimizer, scheduler, rank, model if is_fsdp(accelerator) else None)
        console.print(f"resuming from {checkpoint} (step {state.step}/{steps})")
    metrics = MetricsLog(run_dir, resume_step=state.step if checkpoint else None) if main else NoMetrics()
    scored_examples = validation_examples(config) if config.eval.every_steps else []
    best = BestCheckpoint.read(ckpt.checkpoint_root(run_dir), metric_key(config.eval.best_metric),
                               config.eval.early_stopping_patience)

    def evaluate() -> float | None:
        if not data.validation:
            return None
        return validation_loss(model, data.validation, config.eval.batch_size, pad_id, accelerator.autocast)

    def validate() -> dict[str, float]:
        """Validation loss and, with examples to answer, the generation metrics of eval.metrics (rank 0's
        figures, on every rank: decisions taken on them must agree)."""
        loss = evaluate()
        values = {} if loss is None else {"eval_loss": loss}
        if loss is not None and config.task == "pretrain":
            values["eval_perplexity"] = pretrain.perplexity(loss)
        if scored_examples and (main or is_fsdp(accelerator)):  # a sharded model generates on all ranks at once
            model.eval()
            values |= answer_metrics(accelerator.unwrap_model(model), tokenizer, scored_examples,
                                     config.eval.metrics, config.eval.max_new_tokens)
            model.train()
        return from_main(accelerator, values)

    if state.step == 0:
        before = evaluate()
        if before is not None:
            metrics.log(0, eval_loss=before)
            console.print(f"validation loss before training: {before:.4f}")

    model.train()
    progress = TrainProgress(steps, state.step, console)
    interrupted_by = None
    started, tokens_at_start = time.monotonic(), state.tokens_seen
    with stop_on_signals() as signal_stop:
        while state.step < steps:
            order = epoch_batches(lengths, cfg.batch_size, cfg.seed, state.epoch)
            window = order[state.batch_in_epoch : state.batch_in_epoch + batches_per_step]
            if not window:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                continue
            share = rank_share(window, rank, cfg.grad_accum)
            # A rank left without a batch at the end of an epoch still joins the gradient all-reduce,
            # with a batch that trains nothing.
            micro_batches = [batch_of(ids) for ids in share] or [trains_nothing(batch_of(window[0]))]
            loss, kl, grad_norm, tokens = optimizer_step(
                model, optimizer, micro_batches, accelerator, cfg.max_grad_norm, cfg.kl_to_base, adapter_model,
                cfg.chunked_loss, counted=bool(share),
            )
            scheduler.step()
            state.step += 1
            state.batch_in_epoch += len(window)
            state.tokens_seen += tokens
            speed = (state.tokens_seen - tokens_at_start) / max(time.monotonic() - started, 1e-9)
            if state.step % cfg.log_every == 0 or state.step == steps:
                metrics.log(
                    state.step,
                    train_loss=loss,
                    **({"train_kl_to_base": kl} if cfg.kl_to_base > 0 else {}),
                    train_lr=scheduler.get_last_lr()[0],
                    train_grad_norm=grad_norm,
                    train_tokens_per_s=speed,
                    train_epoch=state.epoch + state.batch_in_epoch / batches_per_epoch,
                )
            progress.update(state.step, loss, speed)
            every = config.eval.every_steps
            if every and state.step % every == 0 and state.step < steps:
                values = validate()
                if values:
                    metrics.log(state.step, **values)
                    if best.improved(state.step, values):
                        save(run_dir, state, model, tokenizer, info, optimizer, scheduler, config, accelerator)
                        if main:
                            best.write(ckpt.checkpoint_root(run_dir), ckpt.checkpoint_name(state.step))
                    if on_eval and "eval_loss" in values and on_eval(state.step, values["eval_loss"]):
                        interrupted_by = "stop"
                        break
                    if best.exhausted():
                        console.print(f"early stop at step {state.step}: {best.metric} has not improved in "
                                      f"{best.evals_without_gain} evaluations (best {best.value:.4g} at step {best.step})")
                        break
            every = config.checkpoint.every_steps
            if every and state.step % every == 0 and state.step < steps:
                save(run_dir, state, model, tokenizer, info, optimizer, scheduler, config, accelerator)
            if any_rank(accelerator, bool(signal_stop) or bool(stop and stop(state))):
                interrupted_by = signal_stop.signal_name or "stop"
                break
    progress.close()
    if plan is not None:
        preflight.record_peak(plan, accelerator, run_dir, state.tokens_seen - tokens_at_start, started)

    if interrupted_by:
        save(run_dir, state, model, tokenizer, info, optimizer, scheduler, config, accelerator)
        metrics.close()
        return TrainResult(run_dir, state, steps, interrupted_by, first_eval_loss(run_dir), None)

    after = evaluate()
    if after is not None:
        metrics.log(state.step, eval_loss=after)
    save(run_dir, state, model, tokenizer, info, optimizer, scheduler, config, accelerator)
    weights = full_state_dict(accelerator, model)
    if not main:
        return TrainResult(run_dir, state, steps, None, None, after)
    save_final(run_dir, accelerator.unwrap_model(model), tokenizer, info, weights)
    metrics.close()
    plot_losses(run_dir)
    if is_fsdp(accelerator):  # rank 0 answers alone: with the whole model, not its shard
        from tuneforge.models.load import load_for_inference

        model = load_for_inference(str(run_dir / "final"))[0]
    model.eval()
    tuned_answers = {
        probe_set.key: before_after.answer_with_tuned(probe_set, run_dir, model, tokenizer, config.eval.max_new_tokens)
        for probe_set in sets
    }
    measures = {"validation loss": (first_eval_loss(run_dir), after)}
    if config.task == "pretrain":
        measures["perplexity on held-out text"] = (pretrain.perplexity(first_eval_loss(run_dir)), pretrain.perplexity(after))
    general = before_after.perplexity_change(run_dir, model, tokenizer, general_text, config.eval.batch_size)
    if general:
        measures["perplexity on general text"] = general
    before_after.report(console, run_dir, sets, tuned_answers, measures)
    warning = general and forgetting_warning(*general, config.eval.max_general_perplexity_rise)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}")
    if best.step is not None:
        console.print(f"best checkpoint by {best.metric}: step {best.step} ({best.value:.4g}): "
                      f"{ckpt.checkpoint_root(run_dir) / ckpt.checkpoint_name(best.step)}")
    return TrainResult(run_dir, state, steps, None, first_eval_loss(run_dir), after)


class NoMetrics:
    """What ranks other than 0 log into: only rank 0 writes metrics.jsonl and TensorBoard."""

    def log(self, step: int, **values: float) -> None:
        pass

    def close(self) -> None:
        pass


def optimizer_step(
    model, optimizer, micro_batches, accelerator, max_grad_norm, kl_weight=0.0, adapter_model=None, chunked=False,
    counted=True,
) -> tuple[float, float, float, int]:
    """One update over this rank's micro-batches; `counted=False` for a stand-in that trains nothing.

    Returns (cross-entropy per trained token, KL to base per trained token, grad norm, tokens), all ranks' together.
    """
    device = accelerator.device
    micro_batches = [{k: v.to(device) for k, v in b.items()} for b in micro_batches]
    tokens = sum((b["tokens"] if "tokens" in b else b["attention_mask"]).sum() for b in micro_batches) if counted else 0
    local = torch.tensor([sum(label_count(b["labels"]) for b in micro_batches), int(tokens)], device=device)
    # Every process divides by the global count; DDP averages gradients, hence * num_processes.
    global_count, global_tokens = accelerator.reduce(local, reduction="sum").tolist()
    scale = accelerator.num_processes / max(global_count, 1)
    total_ce = total_kl = 0.0
    for index, batch in enumerate(micro_batches):
        sync = index == len(micro_batches) - 1
        with nullcontext() if sync else accelerator.no_sync(model), accelerator.autocast():
            cross_entropy, kl = loss_sum(model, batch, kl_weight, adapter_model, chunked)
            loss = (cross_entropy + kl_weight * kl) * scale
        accelerator.backward(loss)
        total_ce += cross_entropy.item() * scale
        total_kl += kl.item() * scale
    parameters = list(model.parameters())  # all of them: FSDP computes the global norm only over the whole model
    if max_grad_norm:
        grad_norm = float(accelerator.clip_grad_norm_(parameters, max_grad_norm))
    else:
        grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None])))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    processes = accelerator.num_processes
    sums = torch.tensor([total_ce, total_kl], dtype=torch.float64, device=device) / processes
    total_ce, total_kl = (accelerator.reduce(sums, reduction="sum") if processes > 1 else sums).tolist()
    return total_ce, total_kl, grad_norm, int(global_tokens)


def save(run_dir, state, model, tokenizer, info, optimizer, scheduler, config, accelerator) -> None:
    """A checkpoint that any number of processes can resume: rank 0 writes the full weights, optimizer
    and scheduler states, and every rank's RNG state; the others wait until it is complete."""
    rng = gather_object([ckpt.rng_states()], accelerator)
    fsdp = is_fsdp(accelerator)
    weights = full_state_dict(accelerator, model)
    optimizer_state = ckpt.full_optimizer_state(model, optimizer) if fsdp else None
    if accelerator.is_main_process:
        ckpt.save_checkpoint(
            run_dir, state, accelerator.unwrap_model(model), tokenizer, info, optimizer, scheduler,
            config.checkpoint.keep_last, rng=rng, weights=weights, optimizer_state=optimizer_state,
        )
    accelerator.wait_for_everyone()


def save_final(run_dir: Path, model, tokenizer, info, weights: dict | None = None) -> None:
    tmp, final = run_dir / ".final.tmp", run_dir / "final"
    shutil.rmtree(tmp, ignore_errors=True)
    ckpt.save_model(model, tokenizer, info, tmp, weights)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def first_eval_loss(run_dir: Path) -> float | None:
    return next((r["eval_loss"] for r in read_metrics(run_dir) if "eval_loss" in r), None)


@contextmanager
def untouched(model, trained: bool, adapter_is_start: bool = True):
    """The base model: the model itself before any step, else with its adapter switched off.

    A resumed full fine-tune has no base left in memory: None, and the base answers must
    already be in the run directory (they are written before the first step).  Nor has a resumed
    run that started from another fine-tune's adapter (model.init_from): switched off, it is the
    original base, not the start.
    """
    if not trained:
        yield model
    elif hasattr(model, "disable_adapter") and adapter_is_start:
        with model.disable_adapter():
            yield model
    else:
        yield None


def training_units(data: PreparedData, packing: bool, max_len: int) -> tuple[list[list[int]], list[int]]:
    """What a batch is made of: single examples, or packed bins of examples; with their lengths."""
    lengths = data.train.lengths()
    if not packing:
        return [[i] for i in range(len(lengths))], lengths
    bins = pack(lengths, max_len, data.train.replay_flags())
    return bins, [sum(lengths[i] for i in b) for b in bins]


def add_replay(data: PreparedData, mix, tokenizer, stop_ids: list[int], max_len: int) -> None:
    manifest = data.manifest
    replay = encode_mix(mix, tokenizer, stop_ids, max_len, manifest)
    data.train = data.train.with_extra(replay)
    manifest.replay_source, manifest.replay_generated = mix.source, mix.generated
    manifest.replay_records = len(replay)
    manifest.replay_tokens = sum(len(t.input_ids) for t in replay)
    manifest.train_records = len(data.train)
    manifest.train_tokens += manifest.replay_tokens
    manifest.trained_tokens += sum(t.trained_tokens for t in replay)


def report_data(console: Console, data: PreparedData, model) -> None:
    manifest = data.manifest
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    console.print(
        f"data: {manifest.train_records} train / {manifest.validation_records} validation records, "
        f"{manifest.train_tokens:,} tokens ({manifest.trained_tokens:,} trained); "
        f"trainable parameters: {trainable:,} of {total:,} ({trainable / total:.2%})"
    )
    if manifest.replay_source is not None:
        task_records = manifest.train_records - manifest.replay_records
        task_tokens = manifest.train_tokens - manifest.replay_tokens
        console.print(
            f"training mix: task {task_records} records / {task_tokens:,} tokens; "
            f"replay {manifest.replay_records} records / {manifest.replay_tokens:,} tokens "
            f"({manifest.replay_records / max(manifest.train_records, 1):.0%} of records) "
            f"from {manifest.replay_source}"
            + (f" ({manifest.replay_generated} answers generated now, "
               f"{manifest.replay_records - manifest.replay_generated} from the cache)"
               if manifest.replay_generated else "")
        )
    if manifest.invalid_records or manifest.dropped_records:
        cleaning = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(manifest.cleaning.items()) if v)
        console.print(
            f"[yellow]data report:[/] {manifest.invalid_records} invalid record(s) skipped, "
            f"{manifest.dropped_records} dropped by cleaning ({cleaning or 'none'}); see data_report.json"
        )
    if manifest.truncated:
        console.print(f"[yellow]warning:[/] {len(manifest.truncated)} record(s) truncated to max_seq_length: "
                      + ", ".join(manifest.truncated[:5]) + (" ..." if len(manifest.truncated) > 5 else ""))
