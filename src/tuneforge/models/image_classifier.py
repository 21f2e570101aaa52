"""The image classifier: a timm backbone with a new head, built for training, saved with its labels, loaded to predict.

Three ways to train it, one model: every weight (method full), the head and the backbone's last N
layer groups (image.train_last; the rest frozen, their batch norms kept in eval mode so the frozen
part really stays as it was), or LoRA on the backbone's linear and 1x1/ungrouped convolutions with
the new head trained in full (peft's `modules_to_save`: a fresh head has nothing for a low-rank
update to adapt).  peft wraps any torch module, so timm models need no task type.

A saved classifier is timm's own layout (`config.json` with the architecture and `num_classes`,
`model.safetensors`: `timm.create_model("local-dir:DIR")` loads a full fine-tune), or a peft
adapter; `tuneforge.json` adds the task, base model, method, labels in head order, threshold and
the preprocessing (input size, interpolation, mean, std, crop) that training used, so prediction
prepares images exactly as evaluation did (tests/images/test_train.py reloads and compares).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tuneforge.errors import ModelError
from tuneforge.models.classifier import Prediction, predictions_of, probabilities_of
from tuneforge.models.image_backbone import create_backbone, head_name
from tuneforge.models.labels import LabelSet
from tuneforge.paths import MODEL_INFO, saved_model_dir

TASK = "image_classify"


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input (timm's data config): resize, crop, normalise."""

    input_size: tuple[int, int, int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    crop_mode: str

    @staticmethod
    def of(model, image_size: int | None) -> Preprocess:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        size = tuple(cfg["input_size"]) if image_size is None else (cfg["input_size"][0], image_size, image_size)
        return Preprocess(size, cfg["interpolation"], tuple(cfg["mean"]), tuple(cfg["std"]), cfg["crop_pct"],
                          cfg.get("crop_mode", "center"))

    def transform(self, augment=None):
        """timm's evaluation transform, or with `augment` (config's ImageConfig) its training one."""
        from timm.data import create_transform

        common = dict(input_size=self.input_size, interpolation=self.interpolation, mean=self.mean, std=self.std)
        if augment is None or not augment.augment:
            return create_transform(**common, crop_pct=self.crop_pct, crop_mode=self.crop_mode)
        return create_transform(**common, is_training=True, scale=tuple(augment.scale), hflip=augment.hflip,
                                color_jitter=augment.color_jitter or None)


@dataclass(frozen=True)
class ImageClassifierInfo:
    """tuneforge.json of an image classifier."""

    base_model: str
    method: str  # "lora" (an adapter with the head) or "full"
    labels: LabelSet
    threshold: float
    preprocess: Preprocess

    def write(self, directory: Path) -> None:
        data = {"task": TASK, "base_model": self.base_model, "method": self.method, "labels": list(self.labels.names),
                "multi_label": self.labels.multi_label, "threshold": self.threshold,
                "preprocess": asdict(self.preprocess)}
        (directory / MODEL_INFO).write_text(json.dumps(data, indent=2, ensure_ascii=False))

    @staticmethod
    def read(directory: Path) -> ImageClassifierInfo:
        data = json.loads((directory / MODEL_INFO).read_text())
        if data.get("task") != TASK:
            raise ModelError(f"{directory}: not an image classifier (trained with task: {data.get('task', 'chat')})")
        pre = data["preprocess"]
        preprocess = Preprocess(tuple(pre["input_size"]), pre["interpolation"], tuple(pre["mean"]), tuple(pre["std"]),
                                pre["crop_pct"], pre["crop_mode"])
        return ImageClassifierInfo(data["base_model"], data["method"], LabelSet(tuple(data["labels"]),
                                   data["multi_label"]), data["threshold"], preprocess)


def image_classifier_dir(reference: str) -> Path | None:
    """The saved image classifier a run directory, checkpoint or model directory holds; None if it holds none."""
    path = Path(reference).expanduser()
    saved = saved_model_dir(path) if path.is_dir() else None
    try:
        return saved if saved and json.loads((saved / MODEL_INFO).read_text()).get("task") == TASK else None
    except (OSError, json.JSONDecodeError):
        return None


def lora_targets(model: torch.nn.Module, head: str) -> list[str]:
    """Names of the layers a low-rank update fits: linear layers and convolutions without groups (depthwise
    convolutions have a handful of weights per channel), the head excluded (it trains in full)."""
    names = []
    for name, module in model.named_modules():
        if name == head or name.startswith(head + "."):
            continue
        if isinstance(module, torch.nn.Linear) or isinstance(module, torch.nn.Conv2d) and module.groups == 1:
            names.append(name)
    return names


def freeze_all_but_last(model: torch.nn.Module, groups: int) -> None:
    """Train the head and the backbone's last `groups` coarse layer groups (timm's group_matcher); freeze the rest."""
    from timm.models import group_parameters

    head = head_name(model)
    grouped = group_parameters(model, model.group_matcher(coarse=True))
    body = [names for _, names in sorted(grouped.items()) if not any(n.startswith(head + ".") for n in names)]
    trainable = {n for names in body[len(body) - groups:] for n in names} if groups else set()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable or name.startswith(head + "."))


def frozen_norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Batch norms whose weights are frozen: kept in eval mode while training, or their running statistics
    would drift and change the frozen part of the model."""
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and not any(p.requires_grad for p in m.parameters())]


def build_for_training(config, labels: LabelSet, checkpoint: Path | None):
    """(model, info) for a run: full weights (all, or the last layer groups), or a LoRA adapter with the head."""
    base = create_backbone(config.model.name, len(labels.names))
    preprocess = Preprocess.of(base, config.image.image_size)
    # What timm readers of the saved config.json see: the input size the classifier was trained at.
    base.pretrained_cfg = {**base.pretrained_cfg, "input_size": preprocess.input_size}
    info = ImageClassifierInfo(config.model.name, config.method, labels, config.classify.threshold, preprocess)
    if config.method == "full":
        if checkpoint:
            base.load_state_dict(load_weights(checkpoint / "model"))
        base.requires_grad_(True)
        if config.image.train_last is not None:
            freeze_all_but_last(base, config.image.train_last)
        return base, info
    from peft import LoraConfig, PeftModel, get_peft_model

    head = head_name(base)
    if checkpoint:
        return PeftModel.from_pretrained(base, checkpoint / "model", is_trainable=True), info
    lora = config.lora
    targets = lora_targets(base, head) if lora.target_modules == "all-linear" else lora.target_modules
    if not targets:
        raise ModelError(f"{config.model.name}: no linear or ungrouped convolution layers for LoRA; use method: full")
    model = get_peft_model(base, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=targets, modules_to_save=[head]))
    return model, info


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


def save_image_classifier(model, info: ImageClassifierInfo, directory: Path) -> None:
    """timm's layout (config.json + model.safetensors) or a peft adapter, and tuneforge.json."""
    directory.mkdir(parents=True, exist_ok=True)
    if info.method == "lora":
        model.save_pretrained(directory)
    else:
        from timm.models import save_for_hf

        save_for_hf(model, directory, model_config={"label_names": list(info.labels.names)}, safe_serialization=True)
    info.write(directory)


@dataclass
class ImageClassifier:
    """A loaded image classifier: `classify(images)` for predict and the server."""

    model: torch.nn.Module
    info: ImageClassifierInfo

    @property
    def labels(self) -> LabelSet:
        return self.info.labels

    @torch.inference_mode()
    def probabilities(self, images: list, batch_size: int = 32) -> torch.Tensor:
        """Class probabilities of PIL images (any mode PIL converts to RGB), in their order."""
        transform = self.info.preprocess.transform()
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(image.convert("RGB")) for image in images[start : start + batch_size]])
            chunks.append(self.model(batch.to(device)).float().cpu())
        return probabilities_of(torch.cat(chunks), self.labels.multi_label)

    def classify(self, images: list, batch_size: int = 32, threshold: float | None = None) -> list[Prediction]:
        if not images:
            return []
        return self.predictions(self.probabilities(images, batch_size), threshold)

    def predictions(self, probabilities: torch.Tensor, threshold: float | None = None) -> list[Prediction]:
        """Each row's label(s) at the threshold (the saved one unless given) and its class probabilities."""
        return predictions_of(self.labels, probabilities, self.info.threshold if threshold is None else threshold)


def load_image_classifier(reference: str, device: torch.device | None = None) -> ImageClassifier:
    """A saved image classifier (run directory, its final/, a checkpoint), in eval mode."""
    saved = image_classifier_dir(reference)
    if saved is None:
        raise ModelError(f"{reference}: no image classifier here (a run trained with task: image_classify, its "
                         "final/ or a checkpoint)")
    info = ImageClassifierInfo.read(saved)
    if info.method == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(create_backbone(info.base_model, len(info.labels.names)), saved)
    else:
        model = create_backbone(str(saved), len(info.labels.names))
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return ImageClassifier(model.to(device).eval(), info)
