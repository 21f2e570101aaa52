"""Held-out prompts answered by the base model and the fine-tune, shown side by side.

A prompt file is JSONL: {"prompt": "...", "expect": ["word", ...]}.  `expect` is optional;
an answer "hits" when it contains any expected string as a whole word or number
(case-insensitive; "4" is found in "is 4." but not in "14", and "1000" in "1,000"), which turns
the side-by-side table into a number: how often each model gives the expected answer.  The
task's held-out prompts and the general-ability check (evaluate/general.py) are both probes.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from tuneforge.data.readers import read
from tuneforge.errors import DataError
from tuneforge.models.generate import Sampling, generate_replies


@dataclass(frozen=True)
class Probe:
    prompt: str
    expect: tuple[str, ...] = ()

    def hit(self, answer: str) -> bool | None:
        if not self.expect:
            return None
        text = DIGIT_GROUPS.sub("", answer)
        return any(re.search(rf"(?<!\w){re.escape(word.strip())}(?!\w)", text, re.IGNORECASE) for word in self.expect)


DIGIT_GROUPS = re.compile(r"(?<=\d),(?=\d{3}\b)")  # 1,000 -> 1000


def read_probes(path: Path) -> list[Probe]:
    probes, problems = [], []
    for raw in read(str(path)):
        location, record = raw.location, raw.value
        if raw.problem is not None or not isinstance(record, dict):
            problems.append(f"  {location}: {raw.problem or 'not a JSON object'}")
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
