"""`model.init_from`: a run that starts from another fine-tune's weights (what `tuneforge retrain` builds on)."""

import json

import pytest

from tuneforge.config import load_config
from tuneforge.errors import ConfigError
from tuneforge.train.driver import train
from tuneforge.evaluate.run_metrics import read_metrics


def eval_losses(run_dir):
    return [(row["step"], row["eval_loss"]) for row in read_metrics(run_dir) if "eval_loss" in row]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_run_from_a_fine_tune_starts_at_its_weights(finished_run, run_config, tmp_path, method):
    first = finished_run("first", method=method, **{"train.max_steps": 4})
    (_, base_loss), *_, (_, trained_loss) = eval_losses(first)
    assert trained_loss < base_loss - 0.01  # the first run moved away from the base model
    # A different adapter shape in the run file: a LoRA start keeps the adapter it was saved with.
    config = load_config(run_config(**{"method": method, "model.init_from": str(first), "lora.r": 8,
                                       "train.max_steps": 1, "eval.general_check": False,
                                       "output_dir": str(tmp_path / "second")}))
    result = train(config)
    (step, start_loss), *_ = eval_losses(result.run_dir)
    assert step == 0 and start_loss == pytest.approx(trained_loss, rel=1e-6)  # not the base model's loss
    info = json.loads((result.run_dir / "final" / "tuneforge.json").read_text())
    assert info == {"base_model": config.model.name, "method": method}
    if method == "lora":
        assert json.loads((result.run_dir / "final" / "adapter_config.json").read_text())["r"] == 4


def test_init_from_is_checked_against_the_run_file(finished_run, run_config, tmp_path, tiny_model):
    lora_run = finished_run("lora")

    def problem(**overrides) -> str:
        with pytest.raises(ConfigError) as caught:
            load_config(run_config(**overrides))
        return " ".join(str(caught.value).split())

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "model.init_from" in problem(**{"model.init_from": str(empty)})
    assert "no saved fine-tune here" in problem(**{"model.init_from": str(empty)})
    assert "directory" in problem(**{"model.init_from": str(tmp_path / "missing")})
    assert "set method: lora" in problem(**{"model.init_from": str(lora_run), "method": "full"})
    other = tmp_path / "other-model"
    other.symlink_to(tiny_model)  # another directory of the same model is the same model
    load_config(run_config(**{"model.init_from": str(lora_run), "model.name": str(other)}))
    assert f"was trained on {tiny_model}" in problem(**{"model.init_from": str(lora_run),
                                                       "model.name": "embedded:smollm2-135m-instruct"})
    assert "train.kl_to_base: cannot be used with model.init_from" in problem(
        **{"model.init_from": str(lora_run), "train.kl_to_base": 0.5, "data.replay": {"ratio": 0.2}})
    assert "not supported with classifiers" in problem(**{"model.init_from": str(lora_run), "task": "classify"})
