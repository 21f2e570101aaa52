"""Bad images and labels stop a run before any model loads, each named by path (and file:line for a row);
nothing is trained and the run directory holds nothing but its lock."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from tests.images.conftest import write_image_config, write_toy_folder
from tuneforge.config import load_config
from tuneforge.data.images import image_problem
from tuneforge.errors import DataError
from tuneforge.train.driver import train

QUIET = Console(quiet=True)


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    write_toy_folder(root / "train", 4, seed=1)
    write_toy_folder(root / "test", 2, seed=2)
    return root


def refused(tmp_path, tiny_backbone, train_source, match: str, **overrides) -> None:
    config = load_config(write_image_config(tmp_path, tiny_backbone, train_source, **overrides))
    with pytest.raises(DataError, match=match):
        train(config, console=QUIET)
    run = config.output_dir
    assert sorted(p.name for p in run.iterdir()) == [".tuneforge.lock"]  # no config, metrics, checkpoints


def test_an_unreadable_image_is_named_by_path_and_nothing_is_trained(tmp_path, tiny_backbone, images):
    bad = images / "train" / "red" / "broken.png"
    bad.write_bytes(b"this is not a picture")
    refused(tmp_path, tiny_backbone, images, rf"{bad}: not an image PIL can read")


def test_truncated_empty_and_16_bit_images_are_each_named(tmp_path, tiny_backbone, images):
    whole = (images / "train" / "red" / "000.png").read_bytes()
    truncated = images / "train" / "red" / "truncated.png"
    truncated.write_bytes(whole[: len(whole) // 2])
    empty = images / "train" / "green" / "empty.jpg"
    empty.write_bytes(b"")
    deep = images / "test" / "blue" / "sixteen.png"
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(deep)
    config = load_config(write_image_config(tmp_path, tiny_backbone, images))
    with pytest.raises(DataError) as caught:
        train(config, console=QUIET)
    message = str(caught.value)
    assert "3 bad image(s)" in message
    assert f"{truncated}: truncated or corrupt image" in message
    assert f"{empty}: empty file (0 bytes)" in message
    assert f"{deep}: unsupported image mode I;16" in message


def test_an_image_whose_label_the_classifier_lacks_is_named_by_path(tmp_path, tiny_backbone, images):
    stray = images / "test" / "purple" / "000.png"
    stray.parent.mkdir()
    shutil.copy(images / "test" / "red" / "000.png", stray)
    refused(tmp_path, tiny_backbone, images, rf"{stray}: label 'purple' is not one of the classifier's labels")


def test_a_row_with_an_unknown_label_is_named_by_file_line_and_path(tmp_path, tiny_backbone, images):
    rows = [{"image": f"images/train/red/00{k}.png", "label": "red"} for k in range(4)]
    rows += [{"image": f"images/train/blue/00{k}.png", "label": "blue"} for k in range(4)]
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(json.dumps({"image": "images/test/green/000.png", "label": "green"}) + "\n")
    refused(tmp_path, tiny_backbone, train_file, rf"{test_file}:1 \(.*green/000.png\): label 'green' is not one",
            **{"data.test": str(test_file)})


def test_skip_drops_bad_images_and_says_so(tmp_path, tiny_backbone, images):
    bad = images / "train" / "red" / "broken.png"
    bad.write_bytes(b"GIF89a garbage")
    config = load_config(write_image_config(tmp_path, tiny_backbone, images, **{"data.on_invalid": "skip",
                                                                                "train.epochs": 1}))
    result = train(config, console=QUIET)
    manifest = json.loads((result.run_dir / "data_manifest.json").read_text())
    assert manifest["skipped_images"] == [f"{bad}: not an image PIL can read (unknown or corrupt format)"]
    assert manifest["train_images"] + manifest["validation_images"] == 12


def test_image_problem_accepts_palette_grey_and_rgba_pictures(tmp_path):
    for mode in ("P", "L", "RGBA", "1"):
        path = tmp_path / f"{mode}.png"
        Image.new(mode, (4, 4)).save(path)
        assert image_problem(path)[0] is None, mode
    assert image_problem(tmp_path / "missing.png")[0] == "file not found"
