"""Probe files: held-out prompts with the words a right answer contains.

A prompt file is JSONL: {"prompt": "...", "expect": ["word", ...]}.  `expect` is optional;
an answer "hits" when it contains any expected string as a whole word or number
(case-insensitive; "4" is found in "is 4." but not in "14", and "1000" in "1,000").  Self-replay
(data/replay.py) reads its prompts from such files too, so the format sits with the data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tuneforge.data.readers import read
from tuneforge.errors import DataError


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
