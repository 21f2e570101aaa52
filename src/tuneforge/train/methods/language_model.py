"""Language-model methods on the step driver: supervised fine-tuning (task: chat) and continued
pretraining (task: pretrain).

Both train next-token cross-entropy on the tokens their template marks as trained (assistant replies
for chat, every token for plain text), summed so the driver divides once by the window's trained
tokens; with `train.kl_to_base` a second term, KL(base || tuned) on replay rows, keeps the replay
answers' distributions near the base model's (train/loss.py).  What differs between the two tasks is
data and report, held in `LanguageTask`: pretraining reads plain text only, reports held-out
perplexity, and answers no reply probes (its forgetting check is perplexity on general text).

Data comes first, with the tokenizer alone: a bad record stops the run before the model loads.  Rank 0
fills the caches (an imported model, tokenized data) and generates the base model's answers (replay,
probes) while the other ranks wait; they then read what it wrote (the replay mix in the run directory).
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from tuneforge.config import RunConfig
from tuneforge.data.batching import WIDTH_MULTIPLE, collate, epoch_batches
from tuneforge.data.dataset import label_count
from tuneforge.data.packing import collate_packed, pack
from tuneforge.data.prepare import PreparedData, prepare
from tuneforge.data.replay import encode_mix, replay_mix
from tuneforge.evaluate import before_after
from tuneforge.evaluate.loss import validation_loss
from tuneforge.models.limits import check_max_seq_length
from tuneforge.models.load import load_for_inference
from tuneforge.models.tokenizer import training_tokenizer
from tuneforge.train import checkpoint as ckpt
from tuneforge.train import preflight as estimate
from tuneforge.train.distributed import is_fsdp, trains_nothing
from tuneforge.train.loss import loss_sum
from tuneforge.train.method import PRIMARY, Batch, LossTerms, StepPlan, batch_loss
from tuneforge.train.methods.general_check import check_base, check_tuned
from tuneforge.train.pretrain import perplexity, require_text
from tuneforge.train.selection import answer_metrics, validation_examples
from tuneforge.train.setup import build_model


@dataclass(frozen=True)
class LanguageTask:
    """What a language-model task changes in the shared method: its data rule and its report."""

    replies: bool  # trains replies: answer the task and general probes before and after
    plain_text_only: bool  # refuses chat, preference or labelled files
    reports_perplexity: bool  # eval_perplexity and a held-out perplexity row


CHAT = LanguageTask(replies=True, plain_text_only=False, reports_perplexity=False)
PRETRAIN = LanguageTask(replies=False, plain_text_only=True, reports_perplexity=True)


class LanguageModelMethod:
    """Next-token cross-entropy on trained tokens, plus KL to the base model on replay rows when asked."""

    evaluates_each_epoch = False

    def __init__(self, config: RunConfig, accelerator, console: Console, task: LanguageTask):
        self.config, self.accelerator, self.console, self.task = config, accelerator, console, task
        self.kl_weight = config.train.kl_to_base
        self.weights = {PRIMARY: 1.0, **({"kl_to_base": self.kl_weight} if self.kl_weight > 0 else {})}
        self.run_dir = config.output_dir
        self.sets = before_after.probe_sets(config.eval, replies=task.replies)
        self.general_text = before_after.general_text(config.eval)
        self.scored_examples = validation_examples(config) if config.eval.every_steps and task.replies else []

    # --- data and model -----------------------------------------------------------------------------

    def load(self, checkpoint: Path | None) -> torch.nn.Module:
        cfg = self.config.train
        with self.accelerator.main_process_first():
            check_max_seq_length(self.config.model.name, cfg.max_seq_length)
            self.tokenizer, self.stop_ids = training_tokenizer(self.config.model.name, self.config.data.template)
            self.data = prepare(self.config.data, self.tokenizer, self.stop_ids, cfg.max_seq_length, cfg.seed)
        if self.task.plain_text_only:
            require_text(self.data.manifest)
        model, self.info, self.base_dir = build_model(self.config, self.accelerator.device, checkpoint)
        self.mask_dtype = torch.bfloat16 if self.accelerator.mixed_precision == "bf16" else torch.float32
        self.adapter_model = model if self.kl_weight > 0 else None  # its adapter switched off is the reference
        return model

    def before_training(self, model, resuming: bool) -> None:
        """The base model's answers (replay, probes) and general-text perplexity, generated once by rank 0;
        then the replay mix joins the training data on every rank."""
        config, accelerator, tokenizer = self.config, self.accelerator, self.tokenizer
        replay, seed = config.data.replay, config.train.seed
        mix = None
        if accelerator.is_main_process:
            if replay or self.sets:
                self.console.print("base-model answers for replay and checks (generated once, then cached) ...")
            with untouched(model, trained=resuming, adapter_is_start=config.model.init_from is None) as base:
                if replay:
                    mix = replay_mix(replay, len(self.data.train), seed, self.run_dir, resuming, base, tokenizer,
                                     self.base_dir)
                check_base(self.sets, self.general_text, self.run_dir, resuming, base, tokenizer, self.base_dir,
                           config.eval)
        accelerator.wait_for_everyone()
        if replay:
            if mix is None:  # rank 0 saved the mix in run_dir: the other ranks read that file
                mix = replay_mix(replay, len(self.data.train), seed, self.run_dir, True, None, tokenizer, self.base_dir)
            add_replay(self.data, mix, tokenizer, self.stop_ids, config.train.max_seq_length)
        if accelerator.is_main_process:
            (self.run_dir / "data_manifest.json").write_text(json.dumps(self.data.manifest.as_dict(), indent=2))
            if self.data.directory is not None:
                shutil.copyfile(self.data.directory / "report.json", self.run_dir / "data_report.json")
        report_data(self.console, self.data, model)
        self.units, self.unit_lengths = training_units(self.data, config.data.packing, config.train.max_seq_length)

    # --- batches and loss ---------------------------------------------------------------------------

    def epoch_order(self, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
        return epoch_batches(self.lengths(), batch_size, seed, epoch)

    def lengths(self) -> list[int]:
        return self.unit_lengths

    def batch(self, units: list[int]) -> Batch:
        pad_id, train = self.tokenizer.pad_token_id, self.data.train
        if self.config.data.packing:
            return collate_packed([[train[i] for i in self.units[u]] for u in units], pad_id, self.mask_dtype,
                                  WIDTH_MULTIPLE)
        return collate([train[i] for i in units], pad_id, WIDTH_MULTIPLE)

    def idle(self, batch: Batch) -> Batch:
        return trains_nothing(batch)

    def count(self, batch: Batch) -> int:
        return label_count(batch["labels"])

    def tokens(self, batch: Batch) -> int:
        return int((batch["tokens"] if "tokens" in batch else batch["attention_mask"]).sum())

    def loss_terms(self, model, batch: Batch) -> LossTerms:
        cross_entropy, kl = loss_sum(model, batch, self.kl_weight, self.adapter_model, self.config.train.chunked_loss)
        terms = {PRIMARY: cross_entropy}
        if self.kl_weight > 0:
            terms["kl_to_base"] = kl
        return LossTerms(terms)

    # --- evaluation, saving, report -----------------------------------------------------------------

    def validate(self, model, answers: bool) -> dict[str, float]:
        """Validation loss (and held-out perplexity for pretraining); with `answers`, the generation metrics
        of eval.metrics on validation examples, answered by rank 0 (by every rank for a sharded model)."""
        if not self.data.validation:
            return {}
        loss = validation_loss(model, self.data.validation, self.config.eval.batch_size, self.tokenizer.pad_token_id,
                               self.accelerator.autocast)
        values = {"eval_loss": loss}
        if self.task.reports_perplexity:
            values["eval_perplexity"] = perplexity(loss)
        if answers and self.scored_examples and (self.accelerator.is_main_process or is_fsdp(self.accelerator)):
            model.eval()
            values |= answer_metrics(self.accelerator.unwrap_model(model), self.tokenizer, self.scored_examples,
                                     self.config.eval.metrics, self.config.eval.max_new_tokens)
            model.train()
        return values

    def preflight(self, model, state, plan: StepPlan):
        """The memory estimate (refusing a run that cannot fit) and a timed warm-up pass, on the bare model.
        The probe's loss is the training loss, composed the same way; its worst case makes every row replay."""
        kl_rows = self.kl_weight > 0 and bool(self.config.data.replay)
        return estimate.check(self.config, model, self.accelerator, self.console, self.unit_lengths, self.batch, state,
                              plan, batch_loss(self, model), kl_rows)

    def save_model(self, model, directory: Path, weights: dict | None) -> None:
        ckpt.save_model(model, self.tokenizer, self.info, directory, weights)

    def finish(self, model, eval_loss: tuple[float | None, float | None]):
        """Answers of the tuned model to the probes, beside the base model's; the summary table."""
        if is_fsdp(self.accelerator):  # rank 0 answers alone: with the whole model, not its shard
            model = load_for_inference(str(self.run_dir / "final"))[0]
        model.eval()
        measures = {"validation loss": eval_loss}
        if self.task.reports_perplexity:
            measures["perplexity on held-out text"] = tuple(perplexity(v) for v in eval_loss)
        return check_tuned(self.console, self.sets, self.general_text, self.run_dir, model, self.tokenizer,
                           self.config.eval, measures)


def closing(result, task: LanguageTask) -> list[str]:
    """What `tuneforge train` prints after a finished run: the held-out figures and how to use the model."""
    lines = []
    before, after = result.eval_loss_before, result.eval_loss_after
    if before is not None and after is not None:
        lines.append(f"validation loss: before {before:.4f} -> after {after:.4f}")
        if task.reports_perplexity:
            lines.append(f"held-out perplexity: before {perplexity(before):.2f} -> after {perplexity(after):.2f}")
    return [*lines, f"talk to it: tuneforge chat {result.run_dir}"]


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
