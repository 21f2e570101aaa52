"""Reward functions of the GRPO quickstart, in TRL's signature (they work unchanged with TRL's GRPOTrainer).

Each takes the prompts, the completions (message lists: the prompts are conversational) and the
dataset's other columns as keyword arguments (here `answer`), and returns one float per completion.
"""

import re

FINAL = re.compile(r"(?:^|\n)\s*Answer:\s*(-?\d+)\s*\.?\s*$")


def text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def answer_format(prompts, completions, **kwargs) -> list[float]:
    """1.0 when the reply ends with a last line 'Answer: <number>', else 0.0."""
    return [1.0 if FINAL.search(text(c).strip()) else 0.0 for c in completions]


def correct_answer(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the number on the final 'Answer:' line is right, else 0.0 (no format: no credit)."""
    scores = []
    for completion, expected in zip(completions, answer):
        match = FINAL.search(text(completion).strip())
        scores.append(1.0 if match and match.group(1) == str(expected) else 0.0)
    return scores
