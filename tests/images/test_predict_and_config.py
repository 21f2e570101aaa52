"""`tuneforge predict` on images (folders scored against their label folders, lists, bad images refused before the
model loads), the image_classify run-file rules, the shipped quickstart config, and the seeded shapes set."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from tests.images.conftest import write_image_config
from tuneforge.cli import build_parser
from tuneforge.config import load_config
from tuneforge.data.shapes import generate
from tuneforge.errors import ConfigError, DataError
from tuneforge.train.driver import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_backbone, toy_images):
    directory = tmp_path_factory.mktemp("image-run")
    config = load_config(write_image_config(directory, tiny_backbone, toy_images, **{"train.epochs": 2}))
    return train(config, console=Console(quiet=True)).run_dir


def predict(*argv: str) -> tuple[int, str]:
    console = Console(file=io.StringIO(), width=200)
    args = build_parser().parse_args(["predict", *argv])
    return args.func(args, console), console.file.getvalue()


def test_predict_labels_a_folder_and_scores_it_against_its_label_folders(trained_run, toy_images, tmp_path):
    out = tmp_path / "predictions.jsonl"
    code, printed = predict(str(trained_run), str(toy_images / "test"), "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and len(rows) == 18
    assert set(rows[0]["scores"]) == {"blue", "green", "red"} and rows[0]["label"] in rows[0]["scores"]
    assert abs(sum(rows[0]["scores"].values()) - 1) < 1e-4
    assert "18 prediction(s)" in printed and "against the label folders: accuracy" in printed


def test_predict_takes_images_and_lists_of_images(trained_run, toy_images, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{toy_images / 'test' / 'red' / '000.png'}\n\n{toy_images / 'test' / 'blue' / '001.png'}\n")
    code, printed = predict(str(trained_run / "final"), str(toy_images / "test" / "green" / "002.png"), str(listing))
    sources = [json.loads(line)["source"] for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [Path(s).name for s in sources] == ["002.png", "000.png", "001.png"]
    assert "against" not in printed  # loose images carry no reference labels


def test_predict_names_a_bad_image_before_loading_the_model(trained_run, toy_images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG but not really")
    with pytest.raises(DataError, match=rf"{bad}: "):
        predict(str(trained_run), str(toy_images / "test" / "red" / "000.png"), str(bad))


def test_a_text_classifier_still_takes_one_file(tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    (final / "tuneforge.json").write_text(json.dumps({"task": "classify"}))
    with pytest.raises(ConfigError, match="one FILE"):
        predict(str(tmp_path), "a.jsonl", "b.jsonl")


def test_image_rules(tmp_path, tiny_backbone, toy_images):
    path = write_image_config(tmp_path, tiny_backbone, toy_images)
    path.write_text("\n".join(line for line in path.read_text().splitlines()
                               if "tiny-resnet" not in line and line != "model:"))
    config = load_config(path)
    assert config.model.name == "embedded:efficientnet-lite0"  # the image task's own default
    with pytest.raises(ConfigError, match=r"image.yaml:\d+: image.train_last: freezes part of a full fine-tune"):
        load_config(write_image_config(tmp_path, tiny_backbone, toy_images, method="lora", **{"image.train_last": 1}))
    with pytest.raises(ConfigError, match="applies to task: image_classify"):
        load_config(write_image_config(tmp_path, tiny_backbone, toy_images, task="classify"))
    with pytest.raises(ConfigError, match="scale must be"):
        load_config(write_image_config(tmp_path, tiny_backbone, toy_images, **{"image.scale": [0.9, 0.5]}))


def test_the_image_quickstart_config_parses_on_the_drawn_shapes(tmp_path, monkeypatch):
    generate(tmp_path / "runs" / "shapes", train_per_class=1, test_per_class=1)
    monkeypatch.chdir(tmp_path)
    config = load_config(ROOT / "configs" / "image-quickstart.yaml")
    assert config.task == "image_classify" and config.model.name == "embedded:efficientnet-lite0"


def test_the_shapes_set_is_the_same_bytes_from_the_same_seed(tmp_path):
    def digest(directory: Path) -> str:
        files = sorted(directory.rglob("*.png"))
        return hashlib.sha256(b"".join(p.relative_to(directory).as_posix().encode() + p.read_bytes()
                                       for p in files)).hexdigest()

    first = generate(tmp_path / "a", train_per_class=3, test_per_class=1, size=32)
    second = generate(tmp_path / "b", train_per_class=3, test_per_class=1, size=32)
    assert len(list(first.rglob("*.png"))) == 20
    assert digest(first) == digest(second)
    assert digest(generate(tmp_path / "c", train_per_class=3, test_per_class=1, size=32, seed=1)) != digest(first)


def test_a_timm_hub_name_loads_from_the_hub_cache_offline(tmp_path, tiny_backbone, monkeypatch):
    """`timm/NAME` is read from huggingface_hub's cache (HF_HUB_OFFLINE is set for every test: nothing downloads);
    an architecture that is not cached is a ModelError naming the reference."""
    import shutil

    import huggingface_hub.constants

    from tuneforge.errors import ModelError
    from tuneforge.models.image_backbone import create_backbone

    repo = tmp_path / "hub" / "models--timm--tiny_resnet.test"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(tiny_backbone, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    # huggingface_hub read HF_HUB_OFFLINE when it was imported, maybe before the fixture set it: set what it reads.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = create_backbone("timm/tiny_resnet.test", 4)
    assert model.num_classes == 4 and type(model).__name__ == "ResNet"
    with pytest.raises(ModelError, match="timm/other_model.test: cannot load as a timm image model"):
        create_backbone("timm/other_model.test", 4)


@pytest.mark.parametrize("command", ["eval", "compare"])
def test_eval_and_compare_of_an_image_run_point_to_predict(trained_run, toy_images, command):
    from tuneforge.errors import ModelError

    args = build_parser().parse_args([command, str(trained_run), "--data", str(toy_images / "test")])
    with pytest.raises(ModelError, match=r"is a classifier \(task: image_classify\): use `tuneforge predict .* "
                                         r"IMAGE_OR_FOLDER`"):
        args.func(args, Console(quiet=True))
