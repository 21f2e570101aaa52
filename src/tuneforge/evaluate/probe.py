"""Held-out prompts answered by the base model and the fine-tune, shown side by side.

The prompt file and what a hit is live in data/probes.py; here the prompts are answered and the
answers kept, which turns the side-by-side table into a number: how often each model gives the
expected answer.  The
task's held-out prompts and the general-ability check (evaluate/general.py) are both probes.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tuneforge.data.probes import Probe, read_probes  # noqa: F401  (read_probes: the file format, re-exported)
from tuneforge.models.generate import Sampling, generate_replies


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
