"""Prompt records for reinforcement fine-tuning (task: grpo): a `prompt` and any other columns.

A record is a JSON object with `prompt`: a string, or a list of chat messages ({role, content})
ending with the user's turn (TRL's conversational format); OpenAI's reinforcement fine-tuning files
give the same list as `messages`, which is read as the prompt.  Every other key (a reference answer,
a test case) is kept as it is and given to the rewards as a keyword argument of that name.  A bad
record stops the run naming its file and line, every bad one in one pass
(tests/data/test_prompts.py).
"""

from __future__ import annotations

import random

from tuneforge.data.readers import expand, read
from tuneforge.errors import DataError

ROLES = ("system", "user", "assistant")


def as_prompt_record(value: object) -> object:
    """OpenAI's reinforcement shape (`messages` up to the user's turn, no `prompt`) as a prompt record."""
    if isinstance(value, dict) and "prompt" not in value and "messages" in value:
        value = {"prompt": value["messages"], **{k: v for k, v in value.items() if k != "messages"}}
    return value


def prompt_problem(value: object) -> str | None:
    if not isinstance(value, dict):
        return "a record must be a JSON object with a 'prompt'"
    prompt = value.get("prompt")
    if isinstance(prompt, str):
        return None if prompt.strip() else "'prompt' is empty"
    if isinstance(prompt, list) and prompt:
        for message in prompt:
            if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
                return "'prompt' messages must each be {role: system|user|assistant, content: string}"
        return None if prompt[-1]["role"] == "user" else "'prompt' messages must end with the user's turn"
    return "missing 'prompt' (a string, or a list of chat messages; OpenAI's 'messages' also works)"


def read_prompts(sources: list[str]) -> list[dict]:
    """Every record of the sources, in order; a DataError listing each bad record's location."""
    rows, problems = [], []
    for source in sources:
        for path in expand(source):
            for record in read(path):
                value = as_prompt_record(record.value)
                problem = record.problem or prompt_problem(value)
                if problem:
                    problems.append(f"{record.location}: {problem}")
                else:
                    rows.append(value)
    if problems:
        shown = "\n  ".join(problems[:20])
        raise DataError(f"{len(problems)} bad prompt record(s):\n  {shown}" + ("\n  ..." if len(problems) > 20 else ""))
    if not rows:
        raise DataError(f"no prompt records in {', '.join(sources)}")
    return rows


def messages(row: dict) -> list[dict]:
    """The chat messages a prompt record asks the model to answer."""
    prompt = row["prompt"]
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def held_out(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): a seeded share of the rows kept apart when no validation files are named."""
    if not fraction:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(rows) * fraction))
    kept = set(order[:cut])
    return [r for i, r in enumerate(rows) if i not in kept], [rows[i] for i in sorted(kept)]
