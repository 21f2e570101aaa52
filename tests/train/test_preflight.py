"""Pre-flight: saved activations are measured right, a run that cannot fit is refused with advice before its
first step, the estimate and the measured peak land in preflight.json, and the warm-up changes nothing."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.cli import main
from tuneforge.config import load_config
from tuneforge.train import preflight
from tuneforge.train.driver import train
from tuneforge.evaluate.run_metrics import read_metrics


def test_saved_tensor_bytes_count_activations_not_weights():
    layer = torch.nn.Linear(64, 32)
    x = torch.randn(10, 64, requires_grad=True)
    # Linear saves its input and its weight; only the input is an activation.
    assert preflight.saved_tensor_bytes(layer, lambda: layer(x)) == preflight.SavedBytes(x.nbytes, 0)
    # A frozen layer on an input without gradient saves nothing at all.
    layer.requires_grad_(False)
    assert preflight.saved_tensor_bytes(layer, lambda: layer(torch.randn(10, 64))) == preflight.SavedBytes(0, 0)


def test_views_of_one_tensor_are_counted_once():
    layer = torch.nn.Linear(64, 64)
    x = torch.randn(10, 64, requires_grad=True)
    # q, k and v projections of the same input save it three times: one storage.
    assert preflight.saved_tensor_bytes(layer, lambda: layer(x).sum() + layer(x).sum() + layer(x[2:]).sum()).activations == x.nbytes


@pytest.mark.parametrize("trainable", [True, False])
def test_autocast_weight_copies_are_counted_once_not_per_row(trainable):
    """bf16 autocast saves a bf16 copy of each fp32 weight (as on CUDA): a fixed cost, not an activation."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
    model.requires_grad_(trainable)

    def saved(rows: int) -> preflight.SavedBytes:
        x = torch.randn(rows, 10, 64, requires_grad=not trainable)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return preflight.saved_tensor_bytes(model, lambda: model(x).float().sum())

    one, four = saved(1), saved(4)
    assert one.weight_copies == four.weight_copies > 0
    assert four.activations == 4 * one.activations > 0
    copied = [model[2]] if trainable else [model[0], model[2]]  # the first layer's input needs no gradient
    assert one.weight_copies == sum(layer.weight.numel() * 2 for layer in copied)


def tiny_estimate(tiny_model, rows: int, length: int, processes: int = 1, checkpointing: bool = False,
                  sharded: bool = False):
    from peft import LoraConfig, get_peft_model

    from tuneforge.models.load import load_causal_lm
    from tuneforge.train.loss import loss_sum
    from tuneforge.train.setup import with_checkpointing

    model = get_peft_model(load_causal_lm(tiny_model, torch.float32),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
    model = with_checkpointing(model, checkpointing)
    model.train()
    ids = torch.arange(length).remainder(100).unsqueeze(0) + 10
    row = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),
           "replay": torch.zeros(1, dtype=torch.bool)}
    loss = lambda batch: loss_sum(model, batch, 0.0, None, chunked=True)[0]  # noqa: E731
    return model, preflight.estimate_memory(model, row, loss, rows, torch.device("cpu"), True, False, processes,
                                            processes, sharded)


def test_estimate_components(tiny_model, one_thread):
    model, small = tiny_estimate(tiny_model, rows=2, length=32)
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    assert small.gradients == trainable and small.optimizer == 2 * trainable and small.ddp_buckets == 0
    assert small.weights == sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert small.activations > 0 and small.peak > small.baseline
    # Activations grow with the rows and (linearly here: sdpa keeps no attention matrix) with the length.
    _, long = tiny_estimate(tiny_model, rows=2, length=64)
    assert long.activations == pytest.approx(2 * small.activations, rel=0.05)
    assert small.with_rows(4).activations == 2 * small.activations
    _, two = tiny_estimate(tiny_model, rows=2, length=32, processes=2)
    assert two.ddp_buckets == trainable
    _, fsdp = tiny_estimate(tiny_model, rows=2, length=32, processes=2, sharded=True)
    assert fsdp.ddp_buckets == 0 and fsdp.gradients == trainable // 2 and fsdp.optimizer == 2 * (trainable // 2)
    # Checkpointing keeps each layer's input and recomputes one layer: fewer activations.
    _, checkpointed = tiny_estimate(tiny_model, rows=2, length=64, checkpointing=True)
    assert checkpointed.activations < long.activations


def test_refusal_names_a_batch_size_that_fits(tiny_model):
    _, estimate = tiny_estimate(tiny_model, rows=8, length=64)
    assert preflight.check_fits(estimate, estimate.growth + 1, []) is None
    available = estimate.with_rows(2).growth + 1  # room for 2 rows, not 8
    hints = preflight.advice("full", False, 1024, 64, cuda=False, quantized=False)
    problem = preflight.check_fits(estimate, available, hints)
    assert "train.batch_size: 2" in problem and "train.grad_accum x4" in problem
    assert "method: lora" in problem and "train.gradient_checkpointing: true" in problem
    assert "model.quantize" not in problem  # QLoRA is CUDA-only
    assert "model.quantize: 4bit" in " ".join(preflight.advice("lora", True, 1024, 64, cuda=True, quantized=False))
    # Two CPU processes share the machine's RAM: twice the growth must fit.
    _, shared = tiny_estimate(tiny_model, rows=8, length=64, processes=2)
    assert preflight.check_fits(shared, shared.growth + 1, []) is not None


def test_run_that_cannot_fit_is_refused_before_the_first_step(run_config, monkeypatch, capsys, one_thread):
    monkeypatch.setattr(preflight, "available_memory", lambda device: 1024**2)  # 1 MiB free
    path = run_config(**{"eval.general_check": False})
    assert main(["train", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error: this run needs about" in err and "only 0.00 GiB of RAM is free" in err
    assert "train.batch_size: 1" in err or "train.max_seq_length" in err
    assert "Set train.preflight: warn to train anyway" in err
    run_dir = load_config(path).output_dir
    assert not any("train_loss" in r for r in read_metrics(run_dir))
    assert not (run_dir / "checkpoints").exists()


def test_warn_trains_anyway(run_config, monkeypatch, capsys, one_thread):
    monkeypatch.setattr(preflight, "available_memory", lambda device: 1024**2)
    result = train(load_config(run_config(**{"train.preflight": "warn", "train.max_steps": 2,
                                              "eval.general_check": False})))
    assert result.state.step == 2
    assert "warning:" in capsys.readouterr().err


def test_preflight_json_holds_estimate_and_measured_peak(run_config, one_thread):
    result = train(load_config(run_config(**{"train.max_steps": 2, "eval.general_check": False})))
    record = json.loads((result.run_dir / "preflight.json").read_text())
    memory, measured = record["memory"], record["measured"]
    assert memory["peak"] > memory["baseline"] > 0 and memory["rows"] == 4
    assert record["time"]["seconds_per_step"] > 0 and record["time"]["steps_per_epoch"] == pytest.approx(6 / 1)
    assert measured["peak"] >= memory["baseline"] and measured["peak_over_estimate"] == pytest.approx(
        measured["peak"] / memory["peak"])


def test_warm_up_leaves_training_unchanged(run_config, tmp_path, one_thread):
    """The probe and warm-up use a forked RNG and drop their gradients: with LoRA dropout on, the curve is
    the same to the last bit with and without them."""
    runs = {}
    for mode in ("refuse", "off"):
        config = load_config(run_config(**{"train.preflight": mode, "train.max_steps": 4, "eval.general_check": False,
                                           "train.gradient_checkpointing": True}, output_dir=str(tmp_path / mode)))
        runs[mode] = [r["train_loss"] for r in read_metrics(train(config).run_dir) if "train_loss" in r]
    assert runs["refuse"] == runs["off"]
    assert not (tmp_path / "off" / "preflight.json").exists()
