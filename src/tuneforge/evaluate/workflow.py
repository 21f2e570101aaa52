"""The work of `tuneforge eval` and `tuneforge compare`: settings from flags, else the run's config, then evaluate.

`eval` on a run directory also evaluates the run's base model when it is needed: for gates
relative to the base (`f1 >= base + 0.05`) and for the forgetting check, which warns when the
perplexity on general text rose by more than `eval.max_general_perplexity_rise`.  Gate results
are written to `gates.json` beside the metrics, where deployment looks for them.  The parsers
are in evaluate/commands.py, which imports this module (torch) only when a command runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from tuneforge.config import EvalConfig, RunConfig, load_config
from tuneforge.errors import ConfigError
from tuneforge.evaluate import compare, gates
from tuneforge.evaluate.metrics import generation_metric
from tuneforge.evaluate.evaluator import (
    builtin_general_text, eval_examples, forgetting_warning, load_eval_records, save_results,
)
from tuneforge.data.formats import read_records
from tuneforge.evaluate.commands import GATE_FAILED_EXIT
from tuneforge.models.generate import Sampling
from tuneforge.models.load import ModelInfo, load_tokenizer, refuse_classifier, saved_model_dir


@dataclass
class EvalOptions:
    model: str
    data: list[str] = field(default_factory=list)
    config: Path | None = None
    metrics: list[str] = field(default_factory=list)
    gates: list[str] = field(default_factory=list)
    base: str | None = None
    out: Path | None = None
    limit: int | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None


def run_config_of(model: str, config: Path | None) -> RunConfig | None:
    """The explicit --config, else the config.yaml a run directory holds, else none."""
    if config is not None:
        return load_config(config)
    saved = Path(model) / "config.yaml"
    return load_config(saved) if saved.is_file() else None


def eval_settings(options: EvalOptions, config: RunConfig | None) -> tuple[EvalConfig, list[str]]:
    settings = config.eval if config else EvalConfig()
    updates = {k: v for k, v in {"metrics": options.metrics, "max_new_tokens": options.max_new_tokens,
                                  "batch_size": options.batch_size}.items() if v}
    checked_metrics(options.metrics)
    settings = settings.model_copy(update=updates)
    data = options.data or ([*config.data.validation] if config else [])
    if not data:
        raise ConfigError("name the data to evaluate on: --data FILE (or a run whose config has data.validation)")
    return settings, data


def checked_metrics(names: list[str]) -> list[str]:
    """The metric names given on the command line, each checked before any model is loaded."""
    for name in names:
        generation_metric(name)
    return names


def base_of(model: str, explicit: str | None) -> str | None:
    if explicit:
        return explicit
    path = Path(model)
    saved = saved_model_dir(path) if path.is_dir() else None
    return ModelInfo.read(saved).base_model if saved else None


def evaluate_model(options: EvalOptions, console: Console) -> int:
    """Evaluate a model (and its base where needed); 0, or GATE_FAILED_EXIT naming each failed gate."""
    refuse_classifier(options.model)  # before its data is read: a classifier's run is scored by `tuneforge predict`
    config = run_config_of(options.model, options.config)
    settings, data = eval_settings(options, config)
    gate_list = [gates.parse_gate(text) for text in [*settings.gates, *options.gates]]
    records = load_eval_records(data, options.limit)
    general = read_records(settings.general_text or builtin_general_text())
    base = base_of(options.model, options.base)
    needs_base = base is not None  # for gates relative to the base and for the forgetting check
    references = [base, options.model] if needs_base else [options.model]
    saved = saved_model_dir(Path(options.model)) if Path(options.model).is_dir() else None
    tokenizer = load_tokenizer(saved) if saved else None
    sampling = Sampling(max_new_tokens=settings.max_new_tokens)
    evals = compare.evaluate_references(references, records, settings.metrics, sampling, settings.batch_size,
                                        console, general, tokenizer)
    out = options.out or (Path(options.model) / "eval" / Path(data[0]).stem if saved else Path("eval-results"))
    examples = eval_examples(records)
    for result, side in zip(evals, ("base", "tuned") if needs_base else ("tuned",)):
        save_results(out / side, examples, result)
    compare.print_summary(console, evals, title=f"evaluation on {', '.join(Path(d).name for d in data)}")
    if needs_base:
        compare.print_side_by_side(console, examples, evals, settings.metrics[0] if settings.metrics else "exact_match")
        warning = forgetting_warning(evals[0].metrics.get("perplexity_general", math.nan),
                                     evals[-1].metrics.get("perplexity_general", math.nan),
                                     settings.max_general_perplexity_rise)
        if warning:
            console.print(f"[yellow]warning:[/] {warning}")
    results = gates.check_gates(gate_list, evals[-1].metrics, evals[0].metrics if needs_base else None)
    console.print(f"results: {out}")
    if not results:
        return 0
    gates.print_gates(console, results)
    gates.write_gates(out / "gates.json", results)
    return 0 if gates.gates_passed(results) else GATE_FAILED_EXIT


def compare_models(references: list[str], data: list[str], metrics: list[str], report: Path | None, out: Path,
                   max_new_tokens: int, limit: int | None, console: Console) -> int:
    """Evaluate every model on the same examples; print the summary and the examples that changed most."""
    metric_names = checked_metrics(metrics) or EvalConfig().metrics
    for reference in references:
        refuse_classifier(reference)
    records = load_eval_records(data, limit)
    general = read_records(builtin_general_text())
    evals = compare.evaluate_references(references, records, metric_names, Sampling(max_new_tokens=max_new_tokens),
                                        8, console, general)
    examples = eval_examples(records)
    compare.print_summary(console, evals, title=f"comparison on {', '.join(Path(d).name for d in data)}")
    compare.print_side_by_side(console, examples, evals, metric_names[0])
    compare.save_comparison(out, examples, evals)
    console.print(f"results: {out}")
    if report:
        from tuneforge.evaluate.report import write_report

        run_dirs = {ref: Path(ref) for ref in references if (Path(ref) / "metrics.jsonl").is_file()}
        console.print(f"report: {write_report(report, examples, evals, run_dirs, metric_names[0])}")
    return 0
