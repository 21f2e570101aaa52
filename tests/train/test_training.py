"""Training on a tiny random Llama: learning happens, LoRA freezes the base, resume is exact."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.config import load_config
from tuneforge.errors import RunDirError
from tuneforge.train import checkpoint as ckpt
from tuneforge.train.driver import train
from tuneforge.evaluate.run_metrics import read_metrics


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r}


def test_lora_learns_and_leaves_base_weights_bit_identical(run_config, tiny_model):
    config = load_config(run_config(**{"train.epochs": 6}))
    result = train(config)
    assert result.interrupted_by is None
    assert result.eval_loss_after < result.eval_loss_before - 0.5
    curve = list(losses(result.run_dir).values())
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3

    from tuneforge.models.load import load_for_inference

    tuned, _ = load_for_inference(str(result.run_dir))
    base = load_file(tiny_model / "model.safetensors")
    state = tuned.state_dict()
    changed_adapters = 0
    for name, value in state.items():
        if "lora_" in name:
            changed_adapters += "lora_B" in name and bool(value.abs().sum() > 0)
            continue
        base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
        if base_name in base:
            assert torch.equal(value, base[base_name]), f"{name} changed"
    assert changed_adapters > 0  # lora_B starts at zero; training moved it


def test_full_fine_tuning_changes_weights(run_config, tiny_model):
    result = train(load_config(run_config(method="full", **{"train.learning_rate": 1e-3, "train.max_steps": 4})))
    tuned = load_file(result.run_dir / "final" / "model.safetensors")
    base = load_file(tiny_model / "model.safetensors")
    assert not torch.equal(tuned["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_after_crash_reproduces_uninterrupted_losses(run_config, tmp_path, method):
    overrides = {"method": method, "train.grad_accum": 2, "train.epochs": 3, "train.learning_rate": 1e-3}
    reference = train(load_config(run_config(**overrides, output_dir=str(tmp_path / "reference"))))

    class Crash(Exception):
        pass

    def crash(state):
        if state.step == 5:  # after the step-3 checkpoint, before the step-6 one
            raise Crash

    config = load_config(run_config(**overrides, output_dir=str(tmp_path / "crashed")))
    with pytest.raises(Crash):
        train(config, stop=crash)
    assert ckpt.latest_checkpoint(config.output_dir).name == "step-000003"
    resumed = train(config, resume=True)

    assert resumed.state.step == reference.state.step
    expected, got = losses(reference.run_dir), losses(resumed.run_dir)
    assert list(got) == list(expected)  # steps 4 and 5 of the crashed attempt are not duplicated
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-5)


def test_programmatic_stop_saves_checkpoint_and_resumes(run_config):
    config = load_config(run_config(**{"checkpoint.every_steps": 100}))
    stopped = train(config, stop=lambda state: state.step == 2)
    assert stopped.interrupted_by == "stop"
    latest = ckpt.latest_checkpoint(config.output_dir)
    assert json.loads((latest / "state.json").read_text())["step"] == 2
    finished = train(config, resume=True)
    assert finished.interrupted_by is None and finished.state.step == finished.total_steps


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(run_config, monkeypatch):
    config = load_config(run_config())
    real_save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        if "step-000006" in str(path):
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(config)
    latest = ckpt.latest_checkpoint(config.output_dir)
    assert latest.name == "step-000003"
    assert (latest / "state.json").is_file() and (latest / "optimizer.pt").is_file()
    monkeypatch.setattr(torch, "save", real_save)
    assert train(config, resume=True).interrupted_by is None


def test_existing_run_is_not_overwritten_by_accident(run_config):
    config = load_config(run_config(**{"train.max_steps": 1}))
    train(config)
    before = (config.output_dir / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match="already holds a run"):
        train(config)
    assert (config.output_dir / "metrics.jsonl").read_text() == before
    assert train(config, overwrite=True).interrupted_by is None


def test_run_directory_holds_everything(run_config):
    result = train(load_config(run_config(**{"train.max_steps": 3})))
    run = result.run_dir
    for name in ("config.yaml", "data_manifest.json", "metrics.jsonl", "loss_curve.png", "final/tuneforge.json"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    manifest = json.loads((run / "data_manifest.json").read_text())
    assert manifest["train_records"] == 24 and len(manifest["files"]) == 2
