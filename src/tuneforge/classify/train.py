"""The classify task's training loop: batches of tokenized texts -> logits -> loss -> backward -> AdamW step.

Read it top to bottom: `train_classifier()` reads the data (before the model: a bad record stops the
run in seconds), builds the classifier, scores the untrained head on the held-out split (test, else
validation) for the base-vs-tuned table, then trains, evaluating on the validation split after
every epoch (or every `eval.every_steps`), keeping the best checkpoint by `eval.best_metric`, and
saving `final/`.  Batch order is fixed by (seed, epoch) and checkpoints hold the data position, so
`--resume` continues where a run stopped.  The optimizer, schedule, checkpoints, metrics log and
progress bar are the chat loop's own (train/).

The loss is cross-entropy (with `classify.class_weights: balanced`, each record weighted by its
class's weight) or, for multi-label, binary cross-entropy per class (balanced: BCE's pos_weight).
One process, one device; on CUDA the forward pass runs under bfloat16 autocast over float32 weights.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from tuneforge.classify.data import ClassifyData, Examples, load_examples
from tuneforge.classify.labels import LabelSet, as_names
from tuneforge.classify.model import (
    all_logits, build_for_training, collate, encode, forward, probabilities_of, save_classifier,
)
from tuneforge.classify.scores import print_table, score, write_evaluation
from tuneforge.config import RunConfig, dump_config
from tuneforge.data.batching import epoch_batches
from tuneforge.models.load import pick_dtype
from tuneforge.train import checkpoint as ckpt
from tuneforge.train.checkpoint import TrainState
from tuneforge.train.loop import prepare_run_dir
from tuneforge.train.metrics import MetricsLog, plot_losses
from tuneforge.train.progress import TrainProgress
from tuneforge.train.selection import BestCheckpoint, metric_key
from tuneforge.train.setup import build_optimizer, build_scheduler, seed_everything, total_steps, with_checkpointing
from tuneforge.train.signals import stop_on_signals

BASE_SCORES = "eval/base_scores.json"  # the untrained head's scores, kept for a resumed run's table


@dataclass
class ClassifyResult:
    run_dir: Path
    state: TrainState
    total_steps: int
    interrupted_by: str | None  # signal name, or "stop"; None when finished
    split: str | None = None  # the held-out split of the base-vs-tuned table: "test", else "validation"
    base: dict | None = None  # scores of the untrained head on that split
    tuned: dict | None = None  # scores of the fine-tune


@dataclass
class Encoded:
    """One split, tokenized: token ids per record, and the labels as the loss wants them."""

    examples: Examples
    rows: list[list[int]]
    targets: torch.Tensor


def example_losses(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool, weights: torch.Tensor | None):
    """The loss of each example: cross-entropy, or binary cross-entropy averaged over classes."""
    weights = None if weights is None else weights.to(logits.device)
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights, reduction="none").mean(-1)
    return F.cross_entropy(logits, targets, weight=weights, reduction="none")


def train_classifier(config: RunConfig, resume: bool = False, overwrite: bool = False, console: Console | None = None,
                     stop=None) -> ClassifyResult:
    """Run (or resume) a classifier fine-tune; `stop(state)` after a step may return True to end it early."""
    cfg = config.train
    console = console or Console(stderr=True)
    run_dir = config.output_dir
    checkpoint = prepare_run_dir(run_dir, resume, overwrite)
    if resume and checkpoint is None:
        console.print(f"no checkpoint in {run_dir}; starting from step 0")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    data = load_examples(config.data, cfg.seed)
    labels = LabelSet.from_data(data.train.labels, config.classify.multi_label, config.classify.labels)
    for examples in (data.train, data.validation, data.test):
        for label, source in zip(examples.labels, examples.sources):
            labels.check(label, source)
    model, tokenizer, info = build_for_training(config, labels, checkpoint)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = with_checkpointing(model.to(device), cfg.gradient_checkpointing)
    dtype = pick_dtype(config.model.dtype, device)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype != torch.float32 else nullcontext
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(config))

    def encoded(examples: Examples) -> Encoded:
        rows = encode(tokenizer, examples.texts, info.max_length) if len(examples) else []
        return Encoded(examples, rows, labels.targets(examples.labels))

    train, validation = encoded(data.train), encoded(data.validation)
    held_name = "test" if len(data.test) else ("validation" if len(data.validation) else None)
    held = encoded(data.test) if len(data.test) else validation
    record_data(run_dir, data, tokenizer, info.max_length)
    weights = labels.balanced_weights(data.train.labels) if config.classify.class_weights == "balanced" else None
    report_data(console, data, labels, model, weights)

    def evaluate(split: Encoded) -> tuple[dict, torch.Tensor, list]:
        """Loss, accuracy, macro-F1 and the rest of the report on a split; with its probabilities and labels."""
        model.eval()
        with autocast():
            logits = all_logits(model, split.rows, tokenizer.pad_token_id, config.eval.batch_size)
        model.train()
        probabilities = probabilities_of(logits, labels.multi_label)
        predicted = labels.decode(probabilities, info.threshold)
        report = score(predicted, split.examples.labels, labels)
        report["loss"] = float(example_losses(logits, split.targets, labels.multi_label, weights).mean())
        return report, probabilities, predicted

    def validate() -> dict[str, float]:
        if not len(validation.rows):
            return {}
        report = evaluate(validation)[0]
        return {"eval_loss": report["loss"], "eval_accuracy": report["accuracy"], "eval_macro_f1": report["macro_f1"]}

    lengths = [len(row) for row in train.rows]
    batches_per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    steps = total_steps(cfg, batches_per_epoch)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    state = TrainState()
    if checkpoint:
        state = ckpt.load_training_state(checkpoint, optimizer, scheduler)
        console.print(f"resuming from {checkpoint} (step {state.step}/{steps})")
    metrics = MetricsLog(run_dir, resume_step=state.step if checkpoint else None)
    base_file = run_dir / BASE_SCORES
    base = json.loads(base_file.read_text()) if checkpoint and base_file.is_file() else None
    if state.step == 0:
        if held_name:
            console.print(f"scoring the untrained head on the {held_name} split ({len(held.rows)} records) ...")
            base = evaluate(held)[0]
            base_file.parent.mkdir(parents=True, exist_ok=True)
            base_file.write_text(json.dumps(base, indent=2, ensure_ascii=False))
        before = validate()
        if before:
            metrics.log(0, **before)
    best = BestCheckpoint.read(ckpt.checkpoint_root(run_dir), metric_key(config.eval.best_metric),
                               config.eval.early_stopping_patience)

    def save() -> None:
        ckpt.save_checkpoint(run_dir, state, model, tokenizer, info, optimizer, scheduler, config.checkpoint.keep_last)

    model.train()
    progress = TrainProgress(steps, state.step, console)
    interrupted_by = None
    started, tokens_at_start = time.monotonic(), state.tokens_seen
    with stop_on_signals() as signal_stop:
        while state.step < steps:
            order = epoch_batches(lengths, cfg.batch_size, cfg.seed, state.epoch)
            window = order[state.batch_in_epoch : state.batch_in_epoch + cfg.grad_accum]
            if not window:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                continue
            loss, grad_norm, tokens = optimizer_step(model, optimizer, train, window, tokenizer.pad_token_id,
                                                     labels.multi_label, weights, cfg.max_grad_norm, autocast)
            scheduler.step()
            state.step += 1
            state.batch_in_epoch += len(window)
            state.tokens_seen += tokens
            speed = (state.tokens_seen - tokens_at_start) / max(time.monotonic() - started, 1e-9)
            if state.step % cfg.log_every == 0 or state.step == steps:
                metrics.log(state.step, train_loss=loss, train_lr=scheduler.get_last_lr()[0], train_grad_norm=grad_norm,
                            train_tokens_per_s=speed, train_epoch=state.epoch + state.batch_in_epoch / batches_per_epoch)
            progress.update(state.step, loss, speed)
            epoch_done = state.batch_in_epoch >= len(order)
            due = state.step % config.eval.every_steps == 0 if config.eval.every_steps else epoch_done
            if due and state.step < steps:
                values = validate()
                if values:
                    metrics.log(state.step, **values)
                    if best.improved(state.step, values):
                        save()
                        best.write(ckpt.checkpoint_root(run_dir), ckpt.checkpoint_name(state.step))
                    if best.exhausted():
                        console.print(f"early stop at step {state.step}: {best.metric} has not improved in "
                                      f"{best.evals_without_gain} evaluations "
                                      f"(best {best.value:.4g} at step {best.step})")
                        break
            every = config.checkpoint.every_steps
            if every and state.step % every == 0 and state.step < steps:
                save()
            if signal_stop or (stop and stop(state)):
                interrupted_by = signal_stop.signal_name or "stop"
                break
    progress.close()
    if interrupted_by:
        save()
        metrics.close()
        return ClassifyResult(run_dir, state, steps, interrupted_by)

    after = validate()
    if after:
        metrics.log(state.step, **after)
        if best.improved(state.step, after):
            best.write(ckpt.checkpoint_root(run_dir), ckpt.checkpoint_name(state.step))
    save()
    save_final(run_dir, model, tokenizer, info)
    metrics.close()
    plot_losses(run_dir)
    if best.step is not None:
        console.print(f"best checkpoint by {best.metric}: step {best.step} ({best.value:.4g}): "
                      f"{ckpt.checkpoint_root(run_dir) / ckpt.checkpoint_name(best.step)}")
    if held_name is None:
        console.print("no validation or test records: nothing held out to score (set data.test or data.test_split)")
        return ClassifyResult(run_dir, state, steps, None)
    tuned, probabilities, predicted = evaluate(held)
    if base is not None:  # None only when a resumed run lost eval/base_scores.json
        print_table(console, held_name, len(held.rows), base, tuned)
    rows = prediction_rows(held.examples, predicted, probabilities, labels)
    written = write_evaluation(run_dir / "eval", held_name, base, tuned, rows)
    console.print(f"per-class scores, predictions and confusion matrices: {', '.join(str(p) for p in written)}")
    return ClassifyResult(run_dir, state, steps, None, held_name, base, tuned)


def train_command(config: RunConfig, config_path: Path, resume: bool, overwrite: bool, nproc: int,
                  console: Console) -> int:
    """`tuneforge train` for task: classify: train, then say where the run is and how to use it; the exit code."""
    from tuneforge.errors import ConfigError

    if nproc != 1:
        raise ConfigError(f"{config_path}: task: classify trains in one process; drop --nproc {nproc}")
    result = train_classifier(config, resume=resume, overwrite=overwrite, console=console)
    if result.interrupted_by:
        console.print(f"stopped by {result.interrupted_by} at step {result.state.step}/{result.total_steps}; "
                      f"checkpoint saved. Continue with: tuneforge train {config_path} --resume")
        return {"SIGINT": 130, "SIGTERM": 143}.get(result.interrupted_by, 1)
    console.print(f"done: {result.state.step} steps; run directory {result.run_dir}\n"
                  f"label texts with it: tuneforge predict {result.run_dir} FILE\n"
                  f"serve it: tuneforge serve {result.run_dir}")
    return 0


def optimizer_step(model, optimizer, split: Encoded, window: list[list[int]], pad_id: int, multi_label: bool,
                   weights, max_grad_norm: float | None, autocast) -> tuple[float, float, int]:
    """One update over the window's micro-batches: (mean loss per example, gradient norm, tokens)."""
    count = sum(len(ids) for ids in window)
    device = next(model.parameters()).device
    total_loss, tokens = 0.0, 0
    for ids in window:
        batch = collate([split.rows[i] for i in ids], pad_id)
        with autocast():
            logits = forward(model, batch)
        loss = example_losses(logits, split.targets[ids].to(device), multi_label, weights).sum() / count
        loss.backward()
        total_loss += loss.item()
        tokens += int(batch["attention_mask"].sum())
    parameters = [p for p in model.parameters() if p.grad is not None]
    if max_grad_norm:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm))
    else:
        grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in parameters])))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total_loss, grad_norm, tokens


def save_final(run_dir: Path, model, tokenizer, info) -> None:
    tmp, final = run_dir / ".final.tmp", run_dir / "final"
    shutil.rmtree(tmp, ignore_errors=True)
    save_classifier(model, tokenizer, info, tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def prediction_rows(examples: Examples, predicted: list, probabilities: torch.Tensor, labels: LabelSet) -> list[dict]:
    rows = []
    for text, reference, source, label, row in zip(examples.texts, examples.labels, examples.sources, predicted,
                                                   probabilities.tolist()):
        right = set(as_names(label)) == set(as_names(reference))
        key = "labels" if labels.multi_label else "label"
        out = list(label) if labels.multi_label else label
        ref = list(as_names(reference)) if labels.multi_label else reference
        rows.append({"source": source, "text": text, "reference": ref, key: out, "correct": right,
                     "scores": {name: round(p, 6) for name, p in zip(labels.names, row)}})
    return rows


def record_data(run_dir: Path, data: ClassifyData, tokenizer, max_length: int) -> None:
    """data_manifest.json (files, hashes, counts, texts cut to max_length) and data_report.json."""
    manifest = data.manifest
    for examples in (data.train, data.validation, data.test):
        lengths = [len(ids) for ids in tokenizer(examples.texts)["input_ids"]] if len(examples) else []
        manifest.truncated += [s for s, n in zip(examples.sources, lengths) if n > max_length]
    (run_dir / "data_manifest.json").write_text(json.dumps(manifest.as_dict(), indent=2))
    data.report.write(run_dir / "data_report.json")


def report_data(console: Console, data: ClassifyData, labels: LabelSet, model, weights) -> None:
    counts = Counter(name for label in data.train.labels for name in as_names(label))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    kind = "multi-label" if labels.multi_label else "single-label"
    console.print(f"data: {len(data.train)} train / {len(data.validation)} validation / {len(data.test)} test records; "
                  f"{len(labels.names)} classes ({kind}): " + ", ".join(f"{n} {counts[n]}" for n in labels.names))
    console.print(f"trainable parameters: {trainable:,} of {total:,} ({trainable / total:.2%})")
    if weights is not None:
        console.print("class weights (balanced): "
                      + ", ".join(f"{n} {w:.2f}" for n, w in zip(labels.names, weights.tolist())))
    manifest = data.manifest
    if manifest.invalid_records or manifest.dropped_records:
        console.print(f"[yellow]data report:[/] {manifest.invalid_records} invalid record(s) skipped, "
                      f"{manifest.dropped_records} dropped by cleaning; see data_report.json")
    if data.overlap:
        console.print(f"[yellow]warning:[/] {len(data.overlap)} held-out record(s) repeat a training text, which "
                      f"flatters the held-out scores: {', '.join(data.overlap[:5])}"
                      + (" ..." if len(data.overlap) > 5 else ""))
