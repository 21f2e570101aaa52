"""Held-out prompts answered and scored by a run's rewards: mean reward and pass rate, before and after.

Answers are greedy (temperature 0), so the base and the tuned model are compared on their most likely
answer, not on a draw; an answer passes when its weighted total reaches grpo.pass_threshold.  Every
answer with its scores is written to RUN/eval/heldout_<side>.jsonl, where a user reads what changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuneforge.data.prompts import messages
from tuneforge.evaluate.rewards import Reward, score
from tuneforge.models.generate import Sampling, generate_completions


@dataclass(frozen=True)
class RewardEval:
    mean_reward: float
    pass_rate: float
    per_reward: dict[str, float]  # each reward's mean over the answers it scored


def heldout_file(run_dir: Path, side: str) -> Path:
    return run_dir / "eval" / f"heldout_{side}.jsonl"


def evaluate_rewards(model, tokenizer, rows: list[dict], rewards: list[Reward], max_new_tokens: int,
                     pass_threshold: float, timeout_s: float, path: Path | None = None) -> RewardEval:
    was_training = model.training
    model.eval()
    completions = generate_completions(model, tokenizer, [messages(r) for r in rows], Sampling(max_new_tokens))
    if was_training:
        model.train()
    texts = [c.text for c in completions]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    scores = score(rewards, rows, texts, ids, timeout_s)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            for i, (row, text) in enumerate(zip(rows, texts)):
                out.write(json.dumps({"prompt": row["prompt"], "answer": text, "reward": scores.total[i],
                                      **{name: values[i] for name, values in scores.per_reward.items()}}) + "\n")
    per_reward = {name: mean([v for v in values if v is not None]) for name, values in scores.per_reward.items()}
    passed = sum(total >= pass_threshold for total in scores.total)
    return RewardEval(mean(scores.total), passed / len(rows), per_reward)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def read_base(run_dir: Path) -> dict | None:
    path = run_dir / "eval" / "heldout_base.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_base(run_dir: Path, result: RewardEval) -> None:
    path = run_dir / "eval" / "heldout_base.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mean_reward": result.mean_reward, "pass_rate": result.pass_rate,
                                "per_reward": result.per_reward}, indent=2))
