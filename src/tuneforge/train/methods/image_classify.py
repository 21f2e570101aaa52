"""Image classification on the step driver (task: image_classify): a timm backbone with a new head.

What text classification has, images reuse: the label set (models/labels.py), the loss of each example
(cross-entropy, or per-class BCE for multi-label; `classify.class_weights`), the report, the
base-vs-tuned table and the eval/ files (evaluate/classification.py through classify.py's
report_held_out), the held-out outcome `HeldOut`.  What differs: the data are image files validated
before the model loads (data/images.py), a batch is decoded from disk and prepared with the model's own
preprocessing (timm's data config), augmented for training as `image:` says, and frozen batch norms stay
in eval mode (models/image_classifier.py).  One process; bf16 autocast on CUDA, float32 on a CPU.
Learning a toy task through this object is pinned by tests/images/test_train.py.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from rich.console import Console

from tuneforge.config import RunConfig
from tuneforge.data.batching import epoch_batches
from tuneforge.data.images import ImageData, ImageExamples, load_images
from tuneforge.evaluate.classification import print_confusion
from tuneforge.models.image_classifier import build_for_training, frozen_norms, save_image_classifier
from tuneforge.models.labels import LabelSet, as_names
from tuneforge.train.method import PRIMARY, Batch, LossTerms, StepPlan
from tuneforge.train.methods.classify import (
    HeldOut, checked_labels, class_weights_of, example_losses, prediction_rows, report_held_out, scored,
    untrained_scores, validation_metrics,
)


def decode(paths: list[Path], transform) -> torch.Tensor:
    """A batch of images from disk as the model's input tensor (any picture mode becomes RGB)."""
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(transform(image.convert("RGB")))
    return torch.stack(images)


class ImageClassifyMethod:
    """Cross-entropy (or per-class BCE) of an image backbone's new head, per image."""

    weights = {PRIMARY: 1.0}
    evaluates_each_epoch = True

    def __init__(self, config: RunConfig, accelerator, console: Console):
        self.config, self.accelerator, self.console = config, accelerator, console
        self.run_dir = config.output_dir

    def load(self, checkpoint: Path | None) -> torch.nn.Module:
        """Every image is found, labelled and decoded first (a bad one stops the run before the model loads)."""
        config = self.config
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        data = load_images(config.data, config.train.seed)
        labels = checked_labels(config, data.train, [data.train, data.validation, data.test])
        model, self.info = build_for_training(config, labels, checkpoint)
        self.data, self.labels = data, labels
        self.class_weights = class_weights_of(config, labels, data.train.labels)
        self.train_transform = self.info.preprocess.transform(config.image)
        self.eval_transform = self.info.preprocess.transform()
        self.frozen_norms = frozen_norms(model)
        return model.to(self.accelerator.device)

    def before_training(self, model, resuming: bool) -> None:
        """Record the data, and score the untrained head on the held-out split (test, else validation)."""
        data = self.data
        self.held_name = "test" if len(data.test) else ("validation" if len(data.validation) else None)
        self.held = data.test if len(data.test) else data.validation
        (self.run_dir / "data_manifest.json").write_text(json.dumps(data.manifest(), indent=2))
        report_data(self.console, data, self.labels, model)
        held = self.held_name and f"{self.held_name} split ({len(self.held)} images)"
        self.base = untrained_scores(self.run_dir, resuming, self.console, held,
                                     lambda: self.evaluate(model, self.held)[0])

    def epoch_order(self, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
        """Shuffled batches; a lone image left over joins another batch, since batch norm cannot train on
        one image whose last feature map is 1x1 (tests/images/test_bad_images.py's skip run has one)."""
        batches = epoch_batches([1] * len(self.data.train), batch_size, seed, epoch)
        lone = [b for b in batches if len(b) == 1]
        if lone and len(batches) > 1:
            batches.remove(lone[0])
            batches[0] = batches[0] + lone[0]
        return batches

    def batch(self, units: list[int]) -> Batch:
        train = self.data.train
        return {"pixels": decode([train.paths[i] for i in units], self.train_transform),
                "targets": self.labels.targets([train.labels[i] for i in units])}

    def idle(self, batch: Batch) -> Batch:
        raise RuntimeError("task: image_classify trains in one process")  # method_for refuses --nproc for it

    def count(self, batch: Batch) -> int:
        return len(batch["targets"])

    def tokens(self, batch: Batch) -> int:
        return len(batch["targets"])  # images: the progress bar's speed is images/s

    def loss_terms(self, model, batch: Batch) -> LossTerms:
        for norm in self.frozen_norms:  # model.train() switched them back on
            norm.eval()
        logits = model(batch["pixels"]).float()
        losses = example_losses(logits, batch["targets"], self.labels.multi_label, self.class_weights)
        return LossTerms({PRIMARY: losses.sum()})

    @torch.inference_mode()
    def logits(self, model, examples: ImageExamples) -> torch.Tensor:
        size, device = self.config.eval.batch_size, self.accelerator.device
        chunks = []
        with self.accelerator.autocast():
            for start in range(0, len(examples), size):
                pixels = decode(examples.paths[start : start + size], self.eval_transform)
                chunks.append(model(pixels.to(device)).float().cpu())
        return torch.cat(chunks)

    def evaluate(self, model, examples: ImageExamples) -> tuple[dict, torch.Tensor, list]:
        """Loss, accuracy, macro-F1 and the rest of the report on a split; with its probabilities and labels."""
        was_training = model.training
        model.eval()
        logits = self.logits(model, examples)
        model.train(was_training)
        return scored(logits, examples.labels, self.labels, self.info.threshold, self.class_weights)

    def validate(self, model, answers: bool) -> dict[str, float]:
        if not len(self.data.validation):
            return {}
        return validation_metrics(self.evaluate(model, self.data.validation)[0])

    def preflight(self, model, state, plan: StepPlan) -> None:
        return None  # the memory estimate models a causal LM's activations, not a CNN's

    def save_model(self, model, directory: Path, weights: dict | None) -> None:
        save_image_classifier(model, self.info, directory)

    def finish(self, model, eval_loss: tuple[float | None, float | None]) -> HeldOut:
        """The held-out table (untrained head vs fine-tune), per-class scores, predictions, confusion matrices."""
        if self.held_name is None:
            self.console.print("no validation or test images: nothing held out to score "
                               "(set data.test, data.test_split or data.val_split)")
            return HeldOut(None, None, None)
        tuned, probabilities, predicted = self.evaluate(model, self.held)
        held = self.held
        rows = prediction_rows(("image", [str(p) for p in held.paths]), held.labels, held.sources, predicted,
                               probabilities, self.labels)
        held_out = report_held_out(self.console, self.run_dir, HeldOut(self.held_name, self.base, tuned), rows)
        if not self.labels.multi_label:
            print_confusion(self.console, tuned, f"Confusion matrix of the fine-tune, {self.held_name} split")
        return held_out


def closing(result) -> list[str]:
    """What `tuneforge train` prints after a finished run: how to use the image classifier."""
    return [f"label images with it: tuneforge predict {result.run_dir} IMAGE_OR_FOLDER ...",
            f"serve it: tuneforge serve {result.run_dir}"]


def report_data(console: Console, data: ImageData, labels: LabelSet, model) -> None:
    counts = Counter(name for label in data.train.labels for name in as_names(label))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    kind = "multi-label" if labels.multi_label else "single-label"
    console.print(f"data: {len(data.train)} train / {len(data.validation)} validation / {len(data.test)} test images; "
                  f"{len(labels.names)} classes ({kind}): " + ", ".join(f"{n} {counts[n]}" for n in labels.names))
    console.print(f"trainable parameters: {trainable:,} of {total:,} ({trainable / total:.2%})")
    if data.skipped:
        console.print(f"[yellow]data:[/] {len(data.skipped)} bad image(s) skipped (data.on_invalid: skip): "
                      + "; ".join(data.skipped[:3]) + (" ..." if len(data.skipped) > 3 else ""))
    if data.copies:
        console.print(f"[yellow]warning:[/] {len(data.copies)} held-out image(s) are copies of training images, which "
                      f"flatters the held-out scores: {', '.join(data.copies[:5])}" + (" ..." if len(data.copies) > 5 else ""))
