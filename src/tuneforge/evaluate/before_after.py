"""Base model vs fine-tune on probe sets: the task's held-out prompts and the general-ability check.

A fine-tune can learn its task and break everything else (catastrophic forgetting), and the
loss on the task's validation set cannot show it.  So every run with the check enabled asks
the base model and the fine-tune the same easy general questions (tuneforge/resources/
general_check.jsonl, kept apart from the self-replay prompts) and reports how many each got
right, beside the task's own result.  Base answers come from the shared answer cache and are
written into RUN/eval/ before training, so a resumed run compares against the same answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tuneforge.config import EvalConfig
from tuneforge.data.formats import read_records
from tuneforge.data.records import Record
from tuneforge.evaluate.evaluator import builtin_general_text, perplexity
from tuneforge.evaluate.probe import Probe, answer, hit_rate, load_answers, read_probes, save_answers
from tuneforge.models.answer_cache import base_answers
from tuneforge.models.generate import Sampling


@dataclass(frozen=True)
class ProbeSet:
    key: str  # "task" or "general": file names under RUN/eval
    title: str
    measure: str  # what a hit means, for the summary's row label
    probes: list[Probe]


def builtin_general_questions() -> Path:
    return Path(str(resources.files("tuneforge.resources") / "general_check.jsonl"))


def probe_sets(config: EvalConfig, replies: bool = True) -> list[ProbeSet]:
    """The prompts answered before and after training; none when the task trains no replies (pretrain),
    whose forgetting check is the perplexity on general text alone."""
    sets = []
    if config.prompts:
        sets.append(ProbeSet("task", "held-out task prompts", "expected answer given", read_probes(config.prompts)))
    if config.general_check and replies:
        path = config.general_questions or builtin_general_questions()
        sets.append(ProbeSet("general", "general questions", "answered correctly", read_probes(path)))
    return sets


def answers_file(run_dir: Path, probe_set: ProbeSet, side: str) -> Path:
    return run_dir / "eval" / f"{probe_set.key}_{side}.jsonl"


def answer_with_base(
    probe_set: ProbeSet, run_dir: Path, resuming: bool, model, tokenizer, model_dir: Path, max_new_tokens: int
) -> None:
    """Writes the base model's answers into the run directory; `model` must be the untouched base."""
    path = answers_file(run_dir, probe_set, "base")
    if not (resuming and path.is_file()):
        prompts = [p.prompt for p in probe_set.probes]
        completions, _ = base_answers(model, tokenizer, model_dir, prompts, Sampling(max_new_tokens))
        save_answers(path, probe_set.probes, [c.text for c in completions])


def answer_with_tuned(probe_set: ProbeSet, run_dir: Path, model, tokenizer, max_new_tokens: int) -> list[str]:
    answers = answer(model, tokenizer, probe_set.probes, max_new_tokens)
    save_answers(answers_file(run_dir, probe_set, "tuned"), probe_set.probes, answers)
    return answers


def print_changes(console: Console, probe_set: ProbeSet, before: list[str], after: list[str], all_rows: bool) -> None:
    """The side-by-side table: every prompt, or only those whose verdict changed (for long sets)."""
    rows = [
        (p, old, new) for p, old, new in zip(probe_set.probes, before, after)
        if all_rows or p.hit(old) != p.hit(new)
    ]
    if not rows:
        return
    title = f"{probe_set.title}: base model vs fine-tuned" + ("" if all_rows else " (only answers that changed verdict)")
    table = Table(title=title, show_lines=True, expand=True)
    table.add_column("prompt", ratio=2)
    table.add_column("base model", ratio=3)
    table.add_column("fine-tuned", ratio=3)

    def mark(probe: Probe, text: str) -> str:
        verdict = probe.hit(text)
        return text if verdict is None else f"{'[green]✓' if verdict else '[red]✗'}[/] {text}"

    for probe, old, new in rows:
        table.add_row(probe.prompt, mark(probe, old), mark(probe, new))
    console.print(table)


@dataclass(frozen=True)
class Summary:
    """Base and tuned figures of one run; a probe score is (hits, scored prompts)."""

    scores: dict[str, tuple[tuple[int, int], tuple[int, int]]]  # row label -> (base, tuned)
    measures: dict[str, tuple[float | None, float | None]]  # "validation loss", ... -> (base, tuned)

    def as_dict(self) -> dict:
        return {
            **{label: {"base": list(base), "tuned": list(tuned)} for label, (base, tuned) in self.scores.items()},
            **{label: {"base": base, "tuned": tuned} for label, (base, tuned) in self.measures.items()},
        }


def summarize(
    run_dir: Path, sets: list[ProbeSet], tuned_answers: dict[str, list[str]],
    measures: dict[str, tuple[float | None, float | None]],
) -> Summary:
    scores = {}
    for probe_set in sets:
        base = hit_rate(probe_set.probes, load_answers(answers_file(run_dir, probe_set, "base")))
        tuned = hit_rate(probe_set.probes, tuned_answers[probe_set.key])
        if base[1]:
            scores[f"{probe_set.title}: {probe_set.measure}"] = (base, tuned)
    summary = Summary(scores, measures)
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    (run_dir / "eval" / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    return summary


def print_summary(console: Console, summary: Summary) -> None:
    table = Table(title="Base model vs fine-tuned")
    table.add_column("")
    table.add_column("base model", justify="right")
    table.add_column("fine-tuned", justify="right")
    table.add_column("change", justify="right")
    for label, ((base_hits, n), (tuned_hits, _)) in summary.scores.items():
        table.add_row(label, f"{base_hits}/{n} ({base_hits / n:.0%})",
                      f"{tuned_hits}/{n} ({tuned_hits / n:.0%})", f"{tuned_hits - base_hits:+d}")
    for label, (base, tuned) in summary.measures.items():
        if base is not None and tuned is not None:
            table.add_row(label, f"{base:.3f}", f"{tuned:.3f}", f"{tuned - base:+.3f}")
    console.print(table)


def report(
    console: Console, run_dir: Path, sets: list[ProbeSet], tuned_answers: dict[str, list[str]],
    measures: dict[str, tuple[float | None, float | None]],
) -> Summary:
    """Print the side-by-side tables and the summary; save the summary as RUN/eval/summary.json.
    `measures` are numeric rows (validation loss, perplexity on general text) as (base, tuned)."""
    for probe_set in sets:
        base = load_answers(answers_file(run_dir, probe_set, "base"))
        print_changes(console, probe_set, base, tuned_answers[probe_set.key], all_rows=probe_set.key == "task")
    summary = summarize(run_dir, sets, tuned_answers, measures)
    print_summary(console, summary)
    return summary


def general_text(config: EvalConfig) -> list[Record]:
    """The general-text records whose perplexity is the forgetting check's second measure (none when off)."""
    if not config.general_check:
        return []
    return read_records(config.general_text or builtin_general_text())


def perplexity_file(run_dir: Path) -> Path:
    return run_dir / "eval" / "perplexity_general_base.json"


def perplexity_with_base(run_dir: Path, resuming: bool, model, tokenizer, records: list[Record], batch_size: int) -> None:
    """The base model's perplexity on general text, saved so a resumed run compares with the same figure."""
    path = perplexity_file(run_dir)
    if records and model is not None and not (resuming and path.is_file()):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"base": perplexity(model, tokenizer, records, batch_size)[1]}))


def perplexity_change(run_dir: Path, model, tokenizer, records: list[Record], batch_size: int) -> tuple[float, float] | None:
    """(base, tuned) perplexity on general text, or None when the check is off or the base figure is missing."""
    path = perplexity_file(run_dir)
    if not records or not path.is_file():
        return None
    return json.loads(path.read_text())["base"], perplexity(model, tokenizer, records, batch_size)[1]
