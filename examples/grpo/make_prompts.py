"""Writes the GRPO quickstart's prompts: small additions and subtractions, the answer in a required format.

Run from the repository root: python examples/grpo/make_prompts.py (seeded: the same files every time).
"""

import json
import random
from pathlib import Path

INSTRUCTION = "End your reply with a last line of the form 'Answer: <number>'."
HERE = Path(__file__).parent


def problem(rng: random.Random) -> dict:
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    if rng.random() < 0.5:
        question, answer = f"What is {a} + {b}?", a + b
    else:
        a, b = max(a, b), min(a, b)
        question, answer = f"What is {a} - {b}?", a - b
    return {"prompt": [{"role": "user", "content": f"{question} {INSTRUCTION}"}], "answer": str(answer)}


def main() -> None:
    rng = random.Random(19)
    seen, rows = set(), []
    while len(rows) < 232:
        row = problem(rng)
        text = row["prompt"][0]["content"]
        if text not in seen:
            seen.add(text)
            rows.append(row)
    for name, part in (("arithmetic_train.jsonl", rows[:200]), ("arithmetic_heldout.jsonl", rows[200:])):
        (HERE / name).write_text("".join(json.dumps(r) + "\n" for r in part))


if __name__ == "__main__":
    main()
