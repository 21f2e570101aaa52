"""The best checkpoint is kept and marked; early stopping ends a run that stopped improving."""

import json

from tuneforge.config import load_config
from tuneforge.errors import ConfigError
from tuneforge.train.driver import train

import pytest


def flat_score(prediction: str, reference: str) -> float:
    """A metric that never improves, whatever the tiny model answers (a custom module:function metric)."""
    return 0.0


def test_early_stopping_on_a_flat_metric_keeps_the_best_checkpoint(run_config):
    # The metric is 0 at every evaluation, so the first is the best and, with patience 1, the second
    # ends the run.
    config = run_config(**{"train.max_steps": 20, "eval.every_steps": 2, "eval.metrics": [f"{__name__}:flat_score"],
                           "eval.best_metric": "flat_score", "eval.early_stopping_patience": 1,
                           "eval.max_new_tokens": 4, "eval.general_check": False,
                           "checkpoint.every_steps": 1, "checkpoint.keep_last": 1})
    result = train(load_config(config))
    assert result.interrupted_by is None and result.state.step == 4
    best = json.loads((result.run_dir / "checkpoints" / "best.json").read_text())
    assert best["checkpoint"] == "step-000002" and best["metric"] == "eval_flat_score" and best["value"] == 0.0
    kept = sorted(p.name for p in (result.run_dir / "checkpoints").glob("step-*"))
    assert kept == ["step-000002", "step-000004"]  # keep_last 1, plus the best
    logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged if "eval_flat_score" in m] == [2, 4]
    assert (result.run_dir / "final").is_dir()


def test_best_by_a_metric_needs_validation_files(run_config, tmp_path):
    config = run_config(**{"data.validation": [], "data.val_split": 0.2, "eval.every_steps": 2,
                           "eval.best_metric": "token_f1", "eval.metrics": ["token_f1"]})
    with pytest.raises(ConfigError, match="name them in data.validation"):
        train(load_config(config))


def test_patience_without_periodic_evaluation_is_a_config_error(run_config):
    with pytest.raises(ConfigError, match="early_stopping_patience counts periodic evaluations"):
        load_config(run_config(**{"eval.early_stopping_patience": 2}))


def test_metrics_are_logged_at_each_evaluation_while_best_is_by_loss(run_config):
    config = run_config(**{"train.max_steps": 4, "eval.every_steps": 2, "eval.metrics": ["token_f1", "exact_match"],
                           "eval.max_new_tokens": 4, "eval.general_check": False})
    result = train(load_config(config))
    logged = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged if "eval_exact_match" in m and "eval_token_f1" in m] == [2]
    best = json.loads((result.run_dir / "checkpoints" / "best.json").read_text())
    # the final evaluation counts too (one driver for every method; the chat loop used to skip it)
    losses = {m["step"]: m["eval_loss"] for m in logged if "eval_loss" in m and m["step"] > 0}
    assert best["metric"] == "eval_loss" and best["step"] == min(losses, key=losses.get)
