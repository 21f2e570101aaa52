"""Compare models on the same examples with the same decoding: base vs fine-tune(s) vs checkpoints.

Each model is loaded, evaluated and released in turn (only one is in memory at a time).  The
summary shows every metric per model and its change from the first model; the side-by-side
shows the examples whose scores changed most, which is where a fine-tune's effect is visible.
"""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tuneforge.data.records import Record
from tuneforge.evaluate.evaluator import EvalExample, ModelEval, evaluate_model, eval_examples
from tuneforge.models.generate import Sampling
from tuneforge.models.load import load_for_inference

LOWER_IS_BETTER = ("loss", "perplexity", "perplexity_general")


def evaluate_references(
    references: list[str],
    records: list[Record],
    metric_names: list[str],
    sampling: Sampling,
    batch_size: int,
    console: Console,
    general: list[Record] | None = None,
    tokenizer=None,
) -> list[ModelEval]:
    """Evaluate each model reference in turn; `tokenizer` (a fine-tune's) is used for all when given,
    so a base model is asked in the chat template its fine-tune was trained with."""
    results = []
    total = len(eval_examples(records))
    for reference in references:
        model, own_tokenizer = load_for_inference(reference)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task(f"generating with {reference}", total=total)
            results.append(evaluate_model(
                reference, model, tokenizer or own_tokenizer, records, metric_names, sampling, batch_size,
                general, on_batch=lambda n: progress.advance(task, n),
            ))
        del model
        gc.collect()
    return results


def change(name: str, first: float, value: float) -> str:
    if math.isnan(first) or math.isnan(value):
        return "-"
    delta = value - first
    better = delta < 0 if name in LOWER_IS_BETTER else delta > 0
    colour = "green" if better and delta else "red" if delta else "white"
    return f"[{colour}]{delta:+.4g}[/]"


def print_summary(console: Console, evals: list[ModelEval], title: str = "comparison") -> None:
    table = Table(title=title)
    table.add_column("metric")
    for index, result in enumerate(evals):
        table.add_column(result.name, justify="right")
        if index:
            table.add_column("change", justify="right")
    names = list(dict.fromkeys(name for result in evals for name in result.metrics))
    for name in names:
        row = [name]
        first = evals[0].metrics.get(name, math.nan)
        for index, result in enumerate(evals):
            value = result.metrics.get(name, math.nan)
            row.append("-" if math.isnan(value) else f"{value:.4g}")
            if index:
                row.append(change(name, first, value))
        table.add_row(*row)
    console.print(table)


def most_changed(evals: list[ModelEval], metric: str, top: int = 10) -> list[int]:
    """Indices of the examples whose `metric` moved most between the first and the last model."""
    first, last = evals[0].scores, evals[-1].scores
    moved = [(abs(b.get(metric, 0.0) - a.get(metric, 0.0)), i) for i, (a, b) in enumerate(zip(first, last))]
    return [i for delta, i in sorted(moved, key=lambda pair: (-pair[0], pair[1])) if delta > 0][:top]


def print_side_by_side(console: Console, examples: list[EvalExample], evals: list[ModelEval], metric: str, top: int = 10) -> None:
    indices = most_changed(evals, metric, top)
    if not indices:
        console.print(f"no example's {metric} changed between {evals[0].name} and {evals[-1].name}")
        return
    table = Table(title=f"examples whose {metric} changed most", show_lines=True, expand=True)
    table.add_column("prompt", ratio=2)
    table.add_column("reference", ratio=2)
    for result in evals:
        table.add_column(result.name, ratio=3)
    for i in indices:
        prompt = examples[i].prompt[-1]["content"] if examples[i].prompt else ""
        cells = [f"{r.outputs[i]}\n[dim]{metric} {r.scores[i].get(metric, math.nan):.2f}[/]" for r in evals]
        table.add_row(prompt, examples[i].reference, *cells)
    console.print(table)


def save_comparison(directory: Path, examples: list[EvalExample], evals: list[ModelEval]) -> None:
    """summary.json (metrics per model) and examples.jsonl (every model's output and scores per example)."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = {"models": [r.name for r in evals], "metrics": {r.name: r.metrics for r in evals},
               "classification": {r.name: r.classification for r in evals if r.classification}}
    (directory / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    with (directory / "examples.jsonl").open("w", encoding="utf-8") as handle:
        for i, example in enumerate(examples):
            row = {"source": example.source, "prompt": example.prompt, "reference": example.reference,
                   "outputs": {r.name: r.outputs[i] for r in evals}, "scores": {r.name: r.scores[i] for r in evals}}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
