"""Reward functions of the GRPO quickstart, in TRL's signature (they work unchanged with TRL's GRPOTrainer).

Each takes the prompts, the completions (message lists: the prompts are conversational) and the
dataset's other columns as keyword arguments (here `answer`), and returns one float per completion.
"""

import re

FINAL = re.compile(r"(?:^|\n)\s*Answer:\s*(-?\d+)\s*\.?\s*$")
NUMBER = re.compile(r"-?\d+")


def text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def answer_format(prompts, completions, **kwargs) -> list[float]:
    """1.0 when the reply ends with a last line 'Answer: <number>', else 0.0."""
    return [1.0 if FINAL.search(text(c).strip()) else 0.0 for c in completions]


def correct_answer(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the reply's last number is the right one, else 0.0.

    Scored apart from the format (a right sum written as '3 + 18 = 21' counts), so the model can learn
    to add while it learns the format; on a reply in the format the last number is the 'Answer:' line's."""
    scores = []
    for completion, expected in zip(completions, answer):
        numbers = NUMBER.findall(text(completion))
        scores.append(1.0 if numbers and numbers[-1] == str(expected) else 0.0)
    return scores
