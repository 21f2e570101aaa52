"""Image fixtures: a tiny random timm backbone saved as a timm model directory, a colour-patch toy task, run files.

The toy task is one a random 0.4M-parameter ResNet (timm's `test_resnet`) learns in a few dozen steps
at 32x32: each class is the colour of a square patch (red, green, blue) placed anywhere on a grey,
noisy background.  Nothing is downloaded: the backbone is built with pretrained=False and saved with
timm's own `save_for_hf`, so the run loads it as a local directory the way it loads any timm checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from tests.conftest import apply_overrides

COLOURS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


def toy_image(colour: str, rng: random.Random, size: int = 32):
    from PIL import Image, ImageDraw

    grey = rng.randrange(90, 170)
    image = Image.frombytes("L", (size, size), bytes(min(255, grey + b % 40) for b in rng.randbytes(size * size)))
    image = image.convert("RGB")
    side = rng.randrange(size // 3, size // 2)
    x, y = rng.randrange(size - side), rng.randrange(size - side)
    ImageDraw.Draw(image).rectangle((x, y, x + side, y + side), fill=COLOURS[colour])
    return image


def write_toy_folder(directory: Path, per_class: int, seed: int) -> Path:
    """DIR/LABEL/N.png for each colour class."""
    rng = random.Random(seed)
    for colour in COLOURS:
        (directory / colour).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            toy_image(colour, rng).save(directory / colour / f"{k:03d}.png")
    return directory


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A saved random timm `test_resnet` (1000-class head, as a pretrained checkpoint has)."""
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-resnet")
    save_for_hf(timm.create_model("test_resnet", pretrained=False), path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def toy_images(tmp_path_factory) -> Path:
    """train/ (16 images a class) and test/ (6 a class) of the colour-patch task."""
    root = tmp_path_factory.mktemp("toy-images")
    write_toy_folder(root / "train", 16, seed=1)
    write_toy_folder(root / "test", 6, seed=2)
    return root


def write_image_config(directory: Path, model: Path, train, **overrides) -> Path:
    """An image_classify run file; keyword overrides are dotted keys."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = {
        "task": "image_classify",
        "model": {"name": str(model)},
        "data": {"train": str(train), "val_split": 0.2},
        "method": "full",
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "image": {"image_size": 32, "scale": [0.8, 1.0], "color_jitter": 0.0},
        "train": {"learning_rate": 3e-3, "epochs": 6, "batch_size": 8, "log_every": 1, "lr_scheduler": "constant",
                  "threads": 1},
        "eval": {"batch_size": 32},
        "output_dir": str(directory / "run"),
    }
    apply_overrides(raw, overrides)
    path = directory / "image.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
