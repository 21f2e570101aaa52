"""task: image_classify through the step driver: a tiny random timm ResNet learns the colour-patch task (full,
head-only, LoRA), and what it saves loads back to the same probabilities."""

from __future__ import annotations

import json

import torch
from PIL import Image
from pytest import approx
from rich.console import Console
from safetensors.torch import load_file

from tests.images.conftest import write_image_config
from tuneforge.config import load_config
from tuneforge.evaluate.run_metrics import read_metrics
from tuneforge.models.image_classifier import load_image_classifier
from tuneforge.train.driver import train

QUIET = Console(quiet=True)


def losses(run_dir, key: str) -> list[float]:
    return [r[key] for r in read_metrics(run_dir) if key in r]


def trained(tmp_path, tiny_backbone, toy_images, **overrides):
    config = load_config(write_image_config(tmp_path, tiny_backbone, toy_images, **overrides))
    return train(config, console=QUIET)


def reloaded_matches_saved_predictions(run_dir) -> None:
    """The saved classifier, loaded from its files, gives the probabilities the run wrote for the held-out images."""
    rows = [json.loads(line) for line in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    classifier = load_image_classifier(str(run_dir))
    loaded = classifier.classify([Image.open(row["image"]) for row in rows])
    for prediction, row in zip(loaded, rows):
        assert max(abs(prediction.scores[k] - row["scores"][k]) for k in row["scores"]) < 1e-4


def test_full_fine_tune_learns_the_toy_task_and_saves_a_timm_model(tmp_path, tiny_backbone, toy_images):
    result = trained(tmp_path, tiny_backbone, toy_images)
    run = result.run_dir
    train_losses = losses(run, "train_loss")
    assert sum(train_losses[-4:]) / 4 < 0.6 * sum(train_losses[:4]) / 4
    assert result.outcome.split == "test"
    assert result.outcome.tuned["accuracy"] >= 0.8 > result.outcome.base["accuracy"]
    assert len(result.outcome.tuned["confusion"]) == 3
    for name in ("classification.json", "predictions.jsonl", "confusion_base.png", "confusion_tuned.png"):
        assert (run / "eval" / name).is_file()
    info = json.loads((run / "final" / "tuneforge.json").read_text())
    assert info["task"] == "image_classify" and info["labels"] == ["blue", "green", "red"]
    assert info["preprocess"]["input_size"] == [3, 32, 32]
    reloaded_matches_saved_predictions(run)
    import timm  # a plain timm user loads the full fine-tune from its directory

    model = timm.create_model(f"local-dir:{run / 'final'}", pretrained=True)
    assert model.num_classes == 3
    assert json.loads((run / "final" / "config.json").read_text())["label_names"] == ["blue", "green", "red"]


def test_head_only_trains_the_head_and_leaves_the_backbone_and_its_batch_norms_as_they_were(
        tmp_path, tiny_backbone, toy_images):
    result = trained(tmp_path, tiny_backbone, toy_images, **{"image.train_last": 0, "train.epochs": 2})
    start = load_file(tiny_backbone / "model.safetensors")
    final = load_file(result.run_dir / "final" / "model.safetensors")
    changed = {k for k in final if k in start and final[k].shape == start[k].shape and not torch.equal(final[k], start[k])}
    assert changed == set()  # every backbone tensor, running means and variances included
    assert {k for k in final if k.startswith("fc.")} == {"fc.weight", "fc.bias"}  # the new 3-class head


def test_lora_adapts_the_backbone_trains_the_head_in_full_and_reloads(tmp_path, tiny_backbone, toy_images):
    result = trained(tmp_path, tiny_backbone, toy_images, method="lora", **{"train.learning_rate": 1e-2})
    final = result.run_dir / "final"
    adapter = load_file(final / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("fc" in k and "lora" not in k for k in adapter)
    assert any(".conv" in k and "lora" in k for k in adapter)  # convolutions are adapted, not only linear layers
    assert result.outcome.tuned["accuracy"] > result.outcome.base["accuracy"]
    reloaded_matches_saved_predictions(result.run_dir)


def test_resume_reproduces_the_uninterrupted_run_augmentations_included(tmp_path, tiny_backbone, toy_images):
    """The augmentations draw from the RNGs a checkpoint saves, so a stopped and resumed run sees the same crops
    and flips, and logs the same losses, as one that ran through."""
    settings = {"train.max_steps": 10, "checkpoint.every_steps": 4, "image.scale": [0.5, 1.0], "image.color_jitter": 0.3}
    whole = train(load_config(write_image_config(tmp_path / "whole", tiny_backbone, toy_images, **settings)),
                  console=QUIET)
    parts = load_config(write_image_config(tmp_path / "parts", tiny_backbone, toy_images, **settings))
    stopped = train(parts, console=QUIET, stop=lambda state: state.step == 5)
    assert stopped.interrupted_by == "stop" and stopped.state.step == 5
    resumed = train(parts, resume=True, console=QUIET)
    assert resumed.state.step == 10
    assert losses(resumed.run_dir, "train_loss") == approx(losses(whole.run_dir, "train_loss"), abs=1e-5)
    assert resumed.outcome.tuned["accuracy"] == whole.outcome.tuned["accuracy"]


def test_a_vision_transformer_trains_with_lora_on_its_linear_layers_and_partial_freezing(
        tmp_path, toy_images):
    """Not only CNNs: timm's tiny random ViT takes LoRA on its attention and MLP layers (its head trained in full),
    and image.train_last on its transformer blocks."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    vit = tmp_path / "tiny-vit"
    save_for_hf(timm.create_model("test_vit", pretrained=False), vit, safe_serialization=True)
    lora = trained(tmp_path / "lora", vit, toy_images, method="lora", **{"train.epochs": 1})
    adapter = load_file(lora.run_dir / "final" / "adapter_model.safetensors")
    assert any("attn.qkv.lora_A" in k for k in adapter) and any("mlp.fc1.lora_B" in k for k in adapter)
    reloaded_matches_saved_predictions(lora.run_dir)
    partial = trained(tmp_path / "partial", vit, toy_images, **{"train.epochs": 1, "image.train_last": 1})
    start, final = load_file(vit / "model.safetensors"), load_file(partial.run_dir / "final" / "model.safetensors")
    changed = {k.split(".")[0] + "." + k.split(".")[1] for k in final
               if k in start and final[k].shape == start[k].shape and not torch.equal(final[k], start[k])}
    assert changed and all(name.startswith(("blocks.", "norm.", "fc_norm.", "head.")) for name in changed), changed
    assert not any(k.startswith(("patch_embed", "blocks.0.")) for k in changed)
