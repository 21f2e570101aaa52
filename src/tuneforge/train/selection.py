"""The best checkpoint and early stopping, judged by validation loss or a generation metric.

Validation loss keeps falling long after answers stop getting better (and sometimes while
they get worse), so a run can be judged by what users see: exact match, token F1, ... on the
validation examples' greedy answers.  The best checkpoint is saved when the chosen value
improves, named in `checkpoints/best.json`, and never rotated away by `keep_last`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from tuneforge.config import RunConfig
from tuneforge.data.formats import read_records
from tuneforge.evaluate.evaluator import EvalExample, eval_examples, score
from tuneforge.models.generate import Sampling, generate_completions

BEST = "best.json"
LOWER_IS_BETTER = ("eval_loss", "eval_perplexity")


def metric_key(name: str) -> str:
    return name if name.startswith("eval_") else f"eval_{name}"


@dataclass
class BestCheckpoint:
    metric: str  # a metrics.jsonl key: eval_loss, eval_token_f1, ...
    patience: int | None = None
    value: float | None = None
    step: int | None = None
    evals_without_gain: int = 0

    def improved(self, step: int, values: dict[str, float]) -> bool:
        """Record one evaluation; True when it is the best so far."""
        value = values.get(self.metric, math.nan)
        if math.isnan(value):
            return False
        lower = self.metric in LOWER_IS_BETTER
        if self.value is None or (value < self.value if lower else value > self.value):
            self.value, self.step, self.evals_without_gain = value, step, 0
            return True
        self.evals_without_gain += 1
        return False

    def exhausted(self) -> bool:
        return self.patience is not None and self.evals_without_gain >= self.patience

    def write(self, checkpoint_root: Path, checkpoint_name: str) -> None:
        path = checkpoint_root / BEST
        tmp = path.with_name(f".{BEST}.tmp")
        tmp.write_text(json.dumps({"checkpoint": checkpoint_name, **asdict(self)}, indent=2))
        tmp.replace(path)

    @staticmethod
    def read(checkpoint_root: Path, metric: str, patience: int | None) -> BestCheckpoint:
        path = checkpoint_root / BEST
        if not path.is_file():
            return BestCheckpoint(metric, patience)
        saved = json.loads(path.read_text())
        if saved.get("metric") != metric:
            return BestCheckpoint(metric, patience)
        return BestCheckpoint(metric, patience, saved["value"], saved["step"], saved.get("evals_without_gain", 0))


def best_checkpoint_name(checkpoint_root: Path) -> str | None:
    path = checkpoint_root / BEST
    return json.loads(path.read_text())["checkpoint"] if path.is_file() else None


def validation_examples(config: RunConfig) -> list[EvalExample]:
    """The examples whose answers are scored at each periodic evaluation: from data.validation files,
    capped at eval.max_examples; none without eval.metrics or validation files (val_split holds out
    tokenized data only).  A best checkpoint judged by a metric needs them: config/rules.py checks
    that when the run file is loaded."""
    if not config.eval.metrics or not config.data.validation:
        return []
    records = [r for path in config.data.validation for r in read_records(path)]
    return eval_examples(records)[: config.eval.max_examples]


def answer_metrics(model, tokenizer, examples: list[EvalExample], metric_names: list[str], max_new_tokens: int) -> dict[str, float]:
    """eval_<metric> for each metric, over the greedy answers to `examples`."""
    if not examples:
        return {}
    completions = generate_completions(model, tokenizer, [e.prompt for e in examples], Sampling(max_new_tokens))
    summary, _, _ = score(examples, [c.text for c in completions], metric_names)
    return {metric_key(name): value for name, value in summary.items()}
