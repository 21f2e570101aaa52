"""Held-out prompts answered by the base model and the fine-tune, shown side by side.

A prompt file is JSONL: {"prompt": "...", "expect": ["word", ...]}.  `expect` is optional;
an answer "hits" when it contains any expected string (case-insensitive), which turns the
side-by-side table into a number: how often each model gives the answer the data taught.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tuneforge.data.formats import iter_raw
from tuneforge.errors import DataError
from tuneforge.models.generate import Sampling, generate_replies


@dataclass(frozen=True)
class Probe:
    prompt: str
    expect: tuple[str, ...] = ()

    def hit(self, answer: str) -> bool | None:
        if not self.expect:
            return None
        lowered = answer.lower()
        return any(word.lower() in lowered for word in self.expect)


def read_probes(path: Path) -> list[Probe]:
    probes, problems = [], []
    for location, record in iter_raw(path):
        if isinstance(record, DataError) or not isinstance(record, dict):
            problems.append(f"  {location}: {record if isinstance(record, DataError) else 'not a JSON object'}")
            continue
        prompt, expect = record.get("prompt"), record.get("expect", [])
        if isinstance(expect, str):
            expect = [expect]
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(f"  {location}: 'prompt' is missing or empty")
        elif not isinstance(expect, list) or not all(isinstance(e, str) for e in expect):
            problems.append(f"  {location}: 'expect' must be a string or a list of strings")
        else:
            probes.append(Probe(prompt, tuple(expect)))
    if problems:
        raise DataError(f"{path}: {len(problems)} invalid prompt record(s):\n" + "\n".join(problems))
    return probes


def answer(model, tokenizer, probes: list[Probe], max_new_tokens: int) -> list[str]:
    conversations = [[{"role": "user", "content": p.prompt}] for p in probes]
    return generate_replies(model, tokenizer, conversations, Sampling(max_new_tokens=max_new_tokens))


def save_answers(path: Path, probes: list[Probe], answers: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({**asdict(p), "answer": a, "hit": p.hit(a)}) for p, a in zip(probes, answers)]
    path.write_text("\n".join(lines) + "\n")


def load_answers(path: Path) -> list[str]:
    return [json.loads(line)["answer"] for line in path.read_text().splitlines() if line.strip()]


def hit_rate(probes: list[Probe], answers: list[str]) -> tuple[int, int]:
    hits = [p.hit(a) for p, a in zip(probes, answers)]
    scored = [h for h in hits if h is not None]
    return sum(scored), len(scored)


def print_comparison(console: Console, probes: list[Probe], before: list[str], after: list[str]) -> None:
    table = Table(title="Held-out prompts: base model vs fine-tuned", show_lines=True, expand=True)
    table.add_column("prompt", ratio=2)
    table.add_column("base model", ratio=3)
    table.add_column("fine-tuned", ratio=3)

    def mark(probe: Probe, text: str) -> str:
        verdict = probe.hit(text)
        return text if verdict is None else f"{'[green]✓' if verdict else '[red]✗'}[/] {text}"

    for probe, old, new in zip(probes, before, after):
        table.add_row(probe.prompt, mark(probe, old), mark(probe, new))
    console.print(table)
    base_hits, scored = hit_rate(probes, before)
    tuned_hits, _ = hit_rate(probes, after)
    if scored:
        console.print(
            f"expected answer given: base {base_hits}/{scored} ({base_hits / scored:.0%}), "
            f"fine-tuned {tuned_hits}/{scored} ({tuned_hits / scored:.0%})"
        )
