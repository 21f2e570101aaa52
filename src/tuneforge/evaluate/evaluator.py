"""Evaluate one model on held-out records: loss, perplexity, generation metrics, per-example results.

An example's prompt is its conversation up to the last assistant turn and its reference is
that turn (a classification record asks its text and expects its label).  Every model is
asked the same prompts with the same decoding (greedy unless configured), so the results of
a base model, a fine-tune and its checkpoints can be compared row by row (evaluate/compare.py).
`perplexity_general` is the perplexity on general text, shipped with tuneforge: a fine-tune
that raises it a lot has forgotten how ordinary language goes (the forgetting check).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tuneforge.data.dataset import DataManifest, encode
from tuneforge.data.formats import read_records
from tuneforge.data.records import Record
from tuneforge.data.template import message_text
from tuneforge.evaluate import metrics as metric_functions
from tuneforge.evaluate.loss import validation_loss
from tuneforge.models.generate import Sampling, end_of_turn_ids, generate_completions

MAX_LOSS_TOKENS = 2048  # records are cut to this for loss and perplexity


@dataclass(frozen=True)
class EvalExample:
    source: str
    prompt: list[dict]  # the conversation up to the reply
    reference: str
    label_set: bool = False  # a classification example: the reference is a class label


@dataclass
class ModelEval:
    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    scores: list[dict[str, float]] = field(default_factory=list)  # per example, per metric
    classification: dict | None = None


def eval_examples(records: list[Record]) -> list[EvalExample]:
    """The generation examples of a record list (text records only count toward the loss)."""
    examples = []
    for record in records:
        if record.kind == "classification":
            examples.append(EvalExample(record.source, [{"role": "user", "content": record.text}], str(record.label), True))
        elif record.kind == "chat":
            last = max(i for i, m in enumerate(record.messages) if m.role == "assistant")
            prompt = [{"role": m.role, "content": message_text(m)} for m in record.messages[:last]]
            examples.append(EvalExample(record.source, prompt, message_text(record.messages[last])))
    return examples


def builtin_general_text() -> Path:
    return Path(str(resources.files("tuneforge.resources") / "general_text.jsonl"))


def perplexity(model, tokenizer, records: list[Record], batch_size: int) -> tuple[float, float]:
    """(mean loss per trained token, its exponential) over chat, text and classification records."""
    trainable = [r for r in records if r.kind in ("chat", "text", "classification")]
    if not trainable:
        return math.nan, math.nan
    stop_ids = end_of_turn_ids(getattr(model, "generation_config", None), tokenizer)
    tokens = encode(trainable, tokenizer, stop_ids, MAX_LOSS_TOKENS, DataManifest())
    loss = validation_loss(model, tokens, batch_size, tokenizer.pad_token_id)
    return loss, math.exp(min(loss, 50.0))


def score(examples: list[EvalExample], outputs: list[str], metric_names: list[str]) -> tuple[dict, list[dict], dict | None]:
    """(summary per metric, per-example scores, classification report or None)."""
    references = [e.reference for e in examples]
    per_example: list[dict[str, float]] = [{} for _ in examples]
    summary: dict[str, float] = {}
    for name in metric_names:
        metric = metric_functions.generation_metric(name)
        values = [float(metric.score(output, reference)) for output, reference in zip(outputs, references)]
        for row, value in zip(per_example, values):
            row[metric.name] = value
        summary[metric.name] = metric_functions.summarize(metric.name, values, outputs, references) if values else math.nan
    report = None
    labelled = [(o, e.reference) for o, e in zip(outputs, examples) if e.label_set]
    if labelled:
        report = metric_functions.classification_report([o for o, _ in labelled], [r for _, r in labelled]).as_dict()
        summary["accuracy"], summary["macro_f1"] = report["accuracy"], report["macro_f1"]
    return summary, per_example, report


def evaluate_model(
    name: str,
    model,
    tokenizer,
    records: list[Record],
    metric_names: list[str],
    sampling: Sampling,
    batch_size: int = 8,
    general: list[Record] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ModelEval:
    examples = eval_examples(records)
    completions = generate_completions(model, tokenizer, [e.prompt for e in examples], sampling, on_batch=on_batch)
    outputs = [c.text for c in completions]
    summary, per_example, report = score(examples, outputs, metric_names)
    summary["loss"], summary["perplexity"] = perplexity(model, tokenizer, records, batch_size)
    if general is not None:
        summary["perplexity_general"] = perplexity(model, tokenizer, general, batch_size)[1]
    return ModelEval(name, summary, outputs, per_example, report)


def load_eval_records(paths: list[str], limit: int | None = None) -> list[Record]:
    records = [record for path in paths for record in read_records(path)]
    return records[:limit] if limit else records


def save_results(directory: Path, examples: list[EvalExample], result: ModelEval) -> None:
    """metrics.json and examples.jsonl (prompt, reference, output, per-metric scores) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = {"model": result.name, "metrics": result.metrics, "classification": result.classification}
    (directory / "metrics.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    with (directory / "examples.jsonl").open("w", encoding="utf-8") as handle:
        for example, output, scores in zip(examples, result.outputs, result.scores):
            handle.write(json.dumps({"source": example.source, "prompt": example.prompt, "reference": example.reference,
                                     "output": output, "scores": scores}, ensure_ascii=False) + "\n")


def forgetting_warning(before: float, after: float, max_rise: float) -> str | None:
    """A warning when perplexity on general text rose by more than `max_rise` (a fraction), else None."""
    if math.isnan(before) or math.isnan(after) or after <= before * (1 + max_rise):
        return None
    return (
        f"perplexity on general text rose from {before:.2f} to {after:.2f} (+{after / before - 1:.0%}, more than "
        f"the {max_rise:.0%} allowed by eval.max_general_perplexity_rise): the fine-tune may have forgotten "
        "general ability; consider data.replay or train.kl_to_base"
    )
