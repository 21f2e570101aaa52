"""Sequence classification on the step driver (task: classify): an encoder (or any model) with a head.

The data is read first (a bad record stops the run in seconds), then the classifier is built; the
untrained head is scored on the held-out split (test, else validation) for the base-vs-tuned table,
and the run validates after every epoch (or every `eval.every_steps`).  The loss is cross-entropy
(with `classify.class_weights: balanced`, each record weighted by its class's weight) or, for
multi-label, binary cross-entropy per class (balanced: BCE's pos_weight), summed over examples so
the driver divides once by the window's example count.  One process; on CUDA the forward pass runs
under bfloat16 autocast over float32 weights, on a CPU in float32 (models/load.py: pick_dtype).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from tuneforge.data.classification import ClassifyData, Examples, load_examples
from tuneforge.models.labels import LabelSet, as_names
from tuneforge.models.classifier import (
    all_logits, build_for_training, collate, encode, forward, probabilities_of, save_classifier,
)
from tuneforge.evaluate.classification import print_table, score, write_evaluation
from tuneforge.config import RunConfig
from tuneforge.data.batching import epoch_batches
from tuneforge.train.method import PRIMARY, Batch, LossTerms, StepPlan
from tuneforge.train.setup import with_checkpointing

BASE_SCORES = "eval/base_scores.json"  # the untrained head's scores, kept for a resumed run's table


@dataclass
class Encoded:
    """One split, tokenized: token ids per record, and the labels as the loss wants them."""

    examples: Examples
    rows: list[list[int]]
    targets: torch.Tensor


@dataclass
class HeldOut:
    """The base-vs-tuned scores on the held-out split ("test", else "validation"); None where nothing was held out."""

    split: str | None
    base: dict | None
    tuned: dict | None


def example_losses(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool, weights: torch.Tensor | None):
    """The loss of each example: cross-entropy, or binary cross-entropy averaged over classes."""
    weights = None if weights is None else weights.to(logits.device)
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights, reduction="none").mean(-1)
    return F.cross_entropy(logits, targets, weight=weights, reduction="none")


def class_weights_of(config: RunConfig, labels: LabelSet, train_labels: list):
    """Per-class loss weights (records / (classes x its records)) with classify.class_weights: balanced, else None."""
    return labels.balanced_weights(train_labels) if config.classify.class_weights == "balanced" else None


def validation_metrics(report: dict) -> dict[str, float]:
    """The eval_* values a classifier's validation logs (text and image classifiers alike)."""
    return {"eval_loss": report["loss"], "eval_accuracy": report["accuracy"], "eval_macro_f1": report["macro_f1"]}


def untrained_scores(run_dir: Path, resuming: bool, console: Console, held: str | None, score) -> dict | None:
    """The untrained head's held-out report: measured once before the first step (`score()`, on the split
    `held` names) and kept in BASE_SCORES, so a resumed run compares with the same base, not a trained one."""
    base_file = run_dir / BASE_SCORES
    if resuming:
        return json.loads(base_file.read_text()) if base_file.is_file() else None
    if held is None:
        return None
    console.print(f"scoring the untrained head on the {held} ...")
    report = score()
    base_file.parent.mkdir(parents=True, exist_ok=True)
    base_file.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def checked_labels(config: RunConfig, train, splits: list) -> LabelSet:
    """The label set of the training labels (or classify.labels), every split's labels checked against it:
    DataError naming the record (file:line, or an image's path) whose label it lacks."""
    labels = LabelSet.from_data(train.labels, config.classify.multi_label, config.classify.labels)
    for examples in splits:
        for label, source in zip(examples.labels, examples.sources):
            labels.check(label, source)
    return labels


def scored(logits: torch.Tensor, references: list, labels: LabelSet, threshold: float, weights) -> tuple[dict, torch.Tensor, list]:
    """(the report with its mean loss, the probabilities, the predicted labels) of a split's logits."""
    probabilities = probabilities_of(logits, labels.multi_label)
    predicted = labels.decode(probabilities, threshold)
    report = score(predicted, references, labels)
    report["loss"] = float(example_losses(logits, labels.targets(references), labels.multi_label, weights).mean())
    return report, probabilities, predicted


class ClassifyMethod:
    """Cross-entropy (or per-class BCE) of a classification head, per example."""

    weights = {PRIMARY: 1.0}
    evaluates_each_epoch = True

    def __init__(self, config: RunConfig, accelerator, console: Console):
        self.config, self.accelerator, self.console = config, accelerator, console
        self.run_dir = config.output_dir

    def load(self, checkpoint: Path | None) -> torch.nn.Module:
        config = self.config
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        data = load_examples(config.data, config.train.seed)
        labels = checked_labels(config, data.train, [data.train, data.validation, data.test])
        model, self.tokenizer, self.info = build_for_training(config, labels, checkpoint)
        self.data, self.labels = data, labels
        self.class_weights = class_weights_of(config, labels, data.train.labels)
        return with_checkpointing(model.to(self.accelerator.device), config.train.gradient_checkpointing)

    def before_training(self, model, resuming: bool) -> None:
        """Tokenize the splits, record the data, and score the untrained head on the held-out split."""
        data = self.data
        self.train, self.validation = self.encoded(data.train), self.encoded(data.validation)
        self.held_name = "test" if len(data.test) else ("validation" if len(data.validation) else None)
        self.held = self.encoded(data.test) if len(data.test) else self.validation
        record_data(self.run_dir, data, self.tokenizer, self.info.max_length)
        report_data(self.console, data, self.labels, model, self.class_weights)
        held = self.held_name and f"{self.held_name} split ({len(self.held.rows)} records)"
        self.base = untrained_scores(self.run_dir, resuming, self.console, held,
                                     lambda: self.evaluate(model, self.held)[0])

    def encoded(self, examples: Examples) -> Encoded:
        rows = encode(self.tokenizer, examples.texts, self.info.max_length) if len(examples) else []
        return Encoded(examples, rows, self.labels.targets(examples.labels))

    def epoch_order(self, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
        return epoch_batches(self.lengths(), batch_size, seed, epoch)

    def lengths(self) -> list[int]:
        return [len(row) for row in self.train.rows]

    def batch(self, units: list[int]) -> Batch:
        return {**collate([self.train.rows[i] for i in units], self.tokenizer.pad_token_id),
                "targets": self.train.targets[units]}

    def idle(self, batch: Batch) -> Batch:
        raise RuntimeError("task: classify trains in one process")  # method_for refuses --nproc for it

    def count(self, batch: Batch) -> int:
        return len(batch["targets"])

    def tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())

    def loss_terms(self, model, batch: Batch) -> LossTerms:
        logits = forward(model, {k: batch[k] for k in ("input_ids", "attention_mask")})
        losses = example_losses(logits, batch["targets"], self.labels.multi_label, self.class_weights)
        return LossTerms({PRIMARY: losses.sum()})

    def evaluate(self, model, split: Encoded) -> tuple[dict, torch.Tensor, list]:
        """Loss, accuracy, macro-F1 and the rest of the report on a split; with its probabilities and labels."""
        was_training = model.training
        model.eval()
        with self.accelerator.autocast():
            logits = all_logits(model, split.rows, self.tokenizer.pad_token_id, self.config.eval.batch_size)
        model.train(was_training)
        return scored(logits, split.examples.labels, self.labels, self.info.threshold, self.class_weights)

    def validate(self, model, answers: bool) -> dict[str, float]:
        if not len(self.validation.rows):
            return {}
        return validation_metrics(self.evaluate(model, self.validation)[0])

    def preflight(self, model, state, plan: StepPlan) -> None:
        return None  # the memory estimate models a causal LM's activations and logits, not an encoder's

    def save_model(self, model, directory: Path, weights: dict | None) -> None:
        save_classifier(model, self.tokenizer, self.info, directory)

    def finish(self, model, eval_loss: tuple[float | None, float | None]) -> HeldOut:
        """The held-out table (untrained head vs fine-tune), per-class scores, predictions, confusion matrices."""
        if self.held_name is None:
            self.console.print("no validation or test records: nothing held out to score "
                               "(set data.test or data.test_split)")
            return HeldOut(None, None, None)
        tuned, probabilities, predicted = self.evaluate(model, self.held)
        held = self.held.examples
        rows = prediction_rows(("text", held.texts), held.labels, held.sources, predicted, probabilities, self.labels)
        return report_held_out(self.console, self.run_dir, HeldOut(self.held_name, self.base, tuned), rows)


def closing(result) -> list[str]:
    """What `tuneforge train` prints after a finished run: how to use the classifier."""
    return [f"label texts with it: tuneforge predict {result.run_dir} FILE", f"serve it: tuneforge serve {result.run_dir}"]


def report_held_out(console: Console, run_dir: Path, held: HeldOut, rows: list[dict]) -> HeldOut:
    """The base-vs-tuned table, then eval/: both reports, the predictions and the confusion matrices (text and
    image classifiers alike)."""
    if held.base is not None:  # None only when a resumed run lost eval/base_scores.json
        print_table(console, held.split, len(rows), held.base, held.tuned)
    written = write_evaluation(run_dir / "eval", held.split, held.base, held.tuned, rows)
    console.print(f"per-class scores, predictions and confusion matrices: {', '.join(str(p) for p in written)}")
    return held


def prediction_rows(inputs: tuple[str, list[str]], references: list, sources: list[str], predicted: list,
                    probabilities: torch.Tensor, labels: LabelSet) -> list[dict]:
    """One row per held-out example; `inputs` is (key, values): ("text", texts) or ("image", paths)."""
    rows = []
    key_in, values = inputs
    for value, reference, source, label, row in zip(values, references, sources, predicted, probabilities.tolist()):
        right = set(as_names(label)) == set(as_names(reference))
        key = "labels" if labels.multi_label else "label"
        out = list(label) if labels.multi_label else label
        ref = list(as_names(reference)) if labels.multi_label else reference
        rows.append({"source": source, key_in: value, "reference": ref, key: out, "correct": right,
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
