"""The before/after checks every method that trains replies shares: probe answers and general-text perplexity.

The base model answers the probe sets (the task's held-out prompts, the general questions) and its
perplexity on general text is measured once, before training, into the run directory; after training
the tuned model does the same and the report shows both, with a warning when general perplexity rose
more than eval.max_general_perplexity_rise (evaluate/before_after.py).  Supervised fine-tuning
(train/methods/language_model.py) and GRPO (train/methods/grpo.py) both call these.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from tuneforge.config import EvalConfig
from tuneforge.data.records import Record
from tuneforge.evaluate import before_after
from tuneforge.evaluate.evaluator import forgetting_warning


def check_base(sets: list[before_after.ProbeSet], general_text: list[Record], run_dir: Path, resuming: bool, base,
               tokenizer, base_dir: Path, config: EvalConfig) -> None:
    """The untouched base model's answers and general-text perplexity, written into run_dir/eval."""
    for probe_set in sets:
        before_after.answer_with_base(probe_set, run_dir, resuming, base, tokenizer, base_dir, config.max_new_tokens)
    before_after.perplexity_with_base(run_dir, resuming, base, tokenizer, general_text, config.batch_size)


def check_tuned(console: Console, sets: list[before_after.ProbeSet], general_text: list[Record], run_dir: Path,
                model, tokenizer, config: EvalConfig, measures: dict[str, tuple[float | None, float | None]]):
    """The tuned model's answers beside the base's, general perplexity added to `measures`; the summary."""
    tuned_answers = {
        probe_set.key: before_after.answer_with_tuned(probe_set, run_dir, model, tokenizer, config.max_new_tokens)
        for probe_set in sets
    }
    general = before_after.perplexity_change(run_dir, model, tokenizer, general_text, config.batch_size)
    if general:
        measures = {**measures, "perplexity on general text": general}
    summary = before_after.report(console, run_dir, sets, tuned_answers, measures)
    warning = general and forgetting_warning(*general, config.max_general_perplexity_rise)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}")
    return summary
