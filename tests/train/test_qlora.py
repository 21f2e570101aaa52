"""QLoRA (model.quantize: 4bit): refused where it cannot run, and trains a 4-bit base where it can (CUDA)."""

import importlib.util
import json

import pytest
import torch

from tuneforge.config import load_config
from tuneforge.errors import ConfigError

CAN_QUANTIZE = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refused_without_cuda_naming_the_key_and_line(run_config):
    path = run_config(**{"model.quantize": "4bit"})
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "quantize" in text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "model.quantize" in message and "CUDA" in message
    assert f"{path}:{line}" in message


def test_refused_for_full_fine_tuning(run_config):
    with pytest.raises(ConfigError, match="model.quantize.*method: lora"):
        load_config(run_config(**{"model.quantize": "4bit", "method": "full"}))


def test_unknown_quantization_is_refused(run_config):
    with pytest.raises(ConfigError, match="model.quantize"):
        load_config(run_config(**{"model.quantize": "3bit"}))


@pytest.mark.skipif(not CAN_QUANTIZE, reason="needs CUDA and bitsandbytes")
def test_trains_adapter_on_4bit_base(run_config):
    from tuneforge.train.driver import train

    config = load_config(run_config(**{"model.quantize": "4bit", "train.max_steps": 6, "eval.general_check": False}))
    result = train(config)
    losses = [r["train_loss"] for r in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
              if "train_loss" in r]
    assert len(losses) == 6 and all(map(torch.isfinite, torch.tensor(losses)))
    assert (result.run_dir / "final" / "adapter_config.json").is_file()
