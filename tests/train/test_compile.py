"""train.compile: compiled decoder layers train to the same losses as eager ones, and save a loadable adapter."""

import pytest

from tuneforge.config import load_config
from tuneforge.train.driver import train
from tuneforge.evaluate.run_metrics import read_metrics


@pytest.mark.slow  # inductor compiles C++ kernels: tens of seconds on a 2-core machine
def test_compiled_layers_match_eager_losses(run_config, tmp_path, one_thread):
    def curve(compiled: bool) -> list[float]:
        overrides = {"train.max_steps": 3, "train.compile": compiled, "lora.dropout": 0.0,
                     "eval.general_check": False, "output_dir": str(tmp_path / f"run-{compiled}")}
        result = train(load_config(run_config(**overrides)))
        assert (result.run_dir / "final" / "adapter_config.json").is_file()
        return [r["train_loss"] for r in read_metrics(result.run_dir) if "train_loss" in r]

    eager, compiled = curve(False), curve(True)
    assert compiled == pytest.approx(eager, rel=1e-4)
