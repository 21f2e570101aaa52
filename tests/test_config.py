from pathlib import Path

import pytest
import yaml

from tuneforge.cli import main
from tuneforge.config import RunConfig, dump_config, load_config
from tuneforge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_misspelled_key_names_file_line_and_closest_key(run_config, tmp_path):
    path = run_config()
    text = path.read_text().replace("learning_rate:", "learning_rte:")
    path.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "learning_rte" in l)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert f"{path}:{line}" in message
    assert "train.learning_rte" in message
    assert "did you mean 'learning_rate'" in message


def test_wrong_type_names_key(run_config):
    path = run_config(**{"train.batch_size": "four"})
    with pytest.raises(ConfigError, match=r"train\.batch_size.*'four'"):
        load_config(path)


def test_unknown_section_lists_valid_keys_when_nothing_is_close(run_config):
    path = run_config(**{"zzz": 1})
    with pytest.raises(ConfigError, match="unknown key 'zzz'; valid keys here: model, data"):
        load_config(path)


def test_missing_data_file_is_named(run_config):
    path = run_config(**{"data.train": "nope.jsonl"})
    with pytest.raises(ConfigError, match=r"run.yaml:\d+: data\.train: file not found: nope.jsonl"):
        load_config(path)


def test_set_overrides_with_yaml_types(run_config):
    config = load_config(run_config(), ["train.learning_rate=1e-4", "method=full", "lora.target_modules=[q_proj]"])
    assert config.train.learning_rate == 1e-4
    assert config.method == "full"
    assert config.lora.target_modules == ["q_proj"]


def test_set_with_unknown_key_points_at_set(run_config):
    with pytest.raises(ConfigError, match=r"--set: train\.epoch: unknown key 'epoch'; did you mean 'epochs'"):
        load_config(run_config(), ["train.epoch=3"])


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name: x\ntrain: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(path)


def test_resolved_config_round_trips(run_config, tmp_path):
    config = load_config(run_config())
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(dump_config(config))
    assert load_config(dumped) == config
    assert Path(yaml.safe_load(dumped.read_text())["output_dir"]).is_absolute()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert isinstance(load_config(path), RunConfig)


def test_cli_reports_config_error_without_traceback(run_config, capsys):
    path = run_config(**{"train.warmup_ratoi": 0.1})
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "warmup_ratoi" in err and "warmup_ratio" in err
    assert "Traceback" not in err


def test_bare_off_in_yaml_is_the_word_off(run_config):
    path = run_config()
    path.write_text(path.read_text().replace("train:\n", "train:\n  preflight: off\n", 1))
    assert load_config(path).train.preflight == "off"
    assert load_config(run_config(), ["train.preflight=off"]).train.preflight == "off"
