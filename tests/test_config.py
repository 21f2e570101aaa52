import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from tuneforge.cli import main
from tuneforge.config import RunConfig, dump_config, load_config
from tuneforge.config.metric_names import BUILTIN_METRICS
from tuneforge.config.rules import TASK_RULES
from tuneforge.errors import ConfigError
from tuneforge.evaluate.metrics import BUILTIN_NAMES

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
    if path.name == "image-quickstart.yaml":  # its images are drawn at run time, into runs/shapes
        pytest.skip("parsed over freshly drawn shapes by tests/images/test_predict_and_config.py")
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


def test_every_task_has_its_rules():
    assert set(TASK_RULES) == set(get_args(RunConfig.model_fields["task"].annotation))


def test_builtin_metric_names_match_the_scorers():
    assert BUILTIN_METRICS == BUILTIN_NAMES


def test_best_metric_not_measured_names_file_and_line(run_config):
    path = run_config(**{"eval.metrics": ["exact_match"], "eval.best_metric": "token_f1"})
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith("best_metric:"))
    with pytest.raises(ConfigError, match=rf"run.yaml:{line}: eval\.best_metric: token_f1 is not one of eval\.metrics"):
        load_config(path)


def test_custom_metric_is_named_by_its_function_for_best_metric(run_config):
    config = load_config(run_config(**{"eval.metrics": [f"{__name__}:length_ratio"], "eval.best_metric": "length_ratio"}))
    assert config.eval.best_metric == "length_ratio"


def length_ratio(prediction: str, reference: str) -> float:
    return min(len(prediction), len(reference)) / max(len(prediction), len(reference), 1)


def test_config_imports_only_the_layers_below_it():
    # config is the bottom layer: loading a run file imports nothing of evaluate, models, data or train, nor torch
    code = "import sys, tuneforge.config; print(*sorted(m for m in sys.modules if m.startswith('tuneforge') or m == 'torch'))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    below = ("tuneforge.config", "tuneforge.errors", "tuneforge.paths")
    assert "tuneforge.config.rules" in loaded
    assert [name for name in loaded if name != "tuneforge" and not name.startswith(below)] == []
