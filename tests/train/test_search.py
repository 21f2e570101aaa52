"""Hyperparameter search on a tiny random Llama: it completes, resumes after an interruption, and its best config parses.

Trials are 4-6 optimizer steps with a validation loss every 2, so the median pruner has
something to compare; the search's own checks (space keys, validation data) need no training.
"""

from __future__ import annotations

import io
import json
import re

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from rich.console import Console

from tuneforge.cli import main
from tuneforge.config import load_config
from tuneforge.errors import ConfigError
from tuneforge.train import search as tune_module
from tuneforge.train.search import DATABASE, STUDY, suggest, trial_config, tune
from tuneforge.train.checkpoint import TrainState
from tuneforge.train.driver import TrainResult

from tests.classify.conftest import tiny_bert  # noqa: F401  (a fixture)

SPACE = {
    "train.learning_rate": {"log_uniform": [1.0e-3, 3.0e-2]},
    "lora.r": {"choices": [2, 4]},
    "train.max_steps": {"int": [4, 6]},
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """The CLI's rich console wraps at the terminal width; long paths would break the lines asserted on."""
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture
def search_config(run_config):
    """A tiny run file with a tune section; keyword overrides as for run_config."""

    def write(space=SPACE, trials=3, **overrides):
        return run_config(**{
            "tune": {"trials": trials, "seed": 0, "space": space},
            "train.max_steps": 4,
            "eval.every_steps": 2,
            "eval.general_check": False,
            "checkpoint.every_steps": 100,
            **overrides,
        })

    return write


def load_study(output_dir) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{output_dir / DATABASE}")


def space_line(path, key: str) -> int:
    """The line of `key` under tune.space in a run file written by search_config."""
    lines = path.read_text().splitlines()
    start = lines.index("  space:")
    return next(i for i, text in enumerate(lines[start:], start + 1) if text.strip().startswith(f"{key}:"))


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


@pytest.mark.usefixtures("one_thread")
def test_search_completes_prints_trials_and_writes_best_config(search_config, tmp_path, capsys):
    path = search_config()
    assert main(["tune", str(path)]) == 0
    err = capsys.readouterr().err
    out = tmp_path / "run"

    trials = load_study(out).trials
    assert len(trials) == 3 and all(t.state in FINISHED for t in trials)
    for t in trials:  # one table row per trial: number, state
        assert re.search(rf"│\s+{t.number}\s+│\s+{t.state.name.lower()}", err), err
        ran = load_config(out / f"trial-{t.number:03d}" / "config.yaml")  # the trial trained with its values
        assert ran.lora.r == t.params["lora.r"]
        assert ran.train.learning_rate == pytest.approx(t.params["train.learning_rate"])
    assert len({t.params["train.learning_rate"] for t in trials}) == 3

    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    config = load_config(out / "best.yaml")
    assert config.output_dir == out / "best"
    assert config.tune is None
    assert config.train.learning_rate == pytest.approx(best.params["train.learning_rate"])
    assert config.lora.r == best.params["lora.r"]
    assert config.train.max_steps == best.params["train.max_steps"]
    assert config.data == load_config(path).data  # everything not searched is the run file's
    assert main(["train", str(out / "best.yaml")]) == 0  # ready to run
    assert (out / "best" / "final").is_dir()

    summary = json.loads((out / "trials.json").read_text())
    assert summary["best_trial"] == best.number
    assert [t["state"] for t in summary["trials"]] == [t.state.name for t in trials]
    assert (out / "optimization_history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.usefixtures("one_thread")
def test_interrupted_search_resumes_and_finishes_its_trials(search_config, tmp_path, capsys, monkeypatch):
    real_train = tune_module.train
    calls = []

    def interrupt_second_trial(config, **kwargs):
        calls.append(config.output_dir.name)
        if len(calls) == 2:  # Ctrl-C at the trial's first validation, from inside the training loop
            report = kwargs["on_eval"]

            def on_eval(step, loss):
                report(step, loss)
                raise KeyboardInterrupt

            kwargs["on_eval"] = on_eval
        return real_train(config, **kwargs)

    monkeypatch.setattr(tune_module, "train", interrupt_second_trial)
    path = search_config()
    out = tmp_path / "run"
    assert main(["tune", str(path)]) == 130
    err = capsys.readouterr().err
    assert f"tuneforge tune {path} --resume" in err
    assert re.search(r"│\s+1\s+│\s+interrupted\s", err), err
    assert [t.state for t in load_study(out).trials] == [TrialState.COMPLETE, TrialState.FAIL]

    assert main(["tune", str(path)]) == 2  # without --resume: refused, nothing lost
    err = capsys.readouterr().err
    assert "already holds a search" in err and "--resume" in err
    assert len(load_study(out).trials) == 2

    monkeypatch.setattr(tune_module, "train", real_train)
    assert main(["tune", str(path), "--resume"]) == 0
    trials = load_study(out).trials
    assert sum(t.state in FINISHED for t in trials) == 3
    assert trials[1].state == TrialState.FAIL  # the interrupted trial never counts ...
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == trials[1].params  # ... its values ran again
    assert len(trials) == 4
    assert load_config(out / "best.yaml").tune is None


@pytest.mark.usefixtures("one_thread")
def test_trial_left_running_by_a_killed_process_fails_and_runs_again(search_config):
    config = load_config(search_config(trials=1))
    config.output_dir.mkdir(parents=True)
    study = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{config.output_dir / DATABASE}")
    killed = study.ask()  # sampled, then the process died: the trial stays RUNNING
    values = {key: suggest(killed, key, param) for key, param in config.tune.space.items()}

    result = tune(config, resume=True, console=quiet())
    trials = load_study(config.output_dir).trials
    assert result.finished == 1 and result.best_trial == 1
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == values and trials[1].user_attrs["retry_of"] == 0


def fake_train(config, **kwargs):
    """Training without the model: the final loss is the learning rate, so the best trial is known."""
    config.output_dir.mkdir(parents=True, exist_ok=True)
    return TrainResult(config.output_dir, TrainState(step=4), 4, None, 2.0, config.train.learning_rate)


def test_overwrite_replaces_a_search_only_once_the_checks_pass(search_config, monkeypatch):
    monkeypatch.setattr(tune_module, "train", fake_train)
    config = load_config(search_config(trials=2))
    tune(config, console=quiet())
    marker = config.output_dir / "trial-000" / "old"
    marker.write_text("from the first search")

    no_eval_steps = config.model_copy(update={"eval": config.eval.model_copy(update={"every_steps": None})})
    with pytest.raises(ConfigError):
        tune(no_eval_steps, overwrite=True, console=quiet())
    assert marker.exists()  # a config error removes nothing

    result = tune(config, trials=1, overwrite=True, console=quiet())
    assert not marker.exists()
    assert result.finished == 1 and len(load_study(config.output_dir).trials) == 1


def test_best_trial_is_the_lowest_final_loss(search_config, monkeypatch):
    monkeypatch.setattr(tune_module, "train", fake_train)
    config = load_config(search_config(trials=4))
    result = tune(config, console=quiet())
    trials = load_study(config.output_dir).trials
    lowest = min(trials, key=lambda t: t.params["train.learning_rate"])
    assert result.best_trial == lowest.number and result.best_value == pytest.approx(lowest.value)
    best = load_config(result.best_config)
    assert best.train.learning_rate == pytest.approx(lowest.params["train.learning_rate"])


def test_a_resumed_search_draws_new_values(search_config, monkeypatch):
    """A resumed process must not start the seeded sampler's random stream over (it would repeat trial 0)."""
    monkeypatch.setattr(tune_module, "train", fake_train)
    config = load_config(search_config(trials=1))
    tune(config, console=quiet())
    tune(config, trials=2, resume=True, console=quiet())
    first, second = load_study(config.output_dir).trials
    assert second.params != first.params


def test_a_trial_out_of_memory_fails_and_the_search_goes_on(search_config, monkeypatch):
    import torch

    def out_of_memory_first(config, **kwargs):
        if config.output_dir.name == "trial-000":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return fake_train(config, **kwargs)

    monkeypatch.setattr(tune_module, "train", out_of_memory_first)
    console = quiet()
    result = tune(load_config(search_config(trials=2)), console=console)
    trials = load_study(result.output_dir).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert result.finished == 2
    assert "trial 0 failed: out of memory" in console.file.getvalue()


def test_a_search_whose_every_trial_fails_stops(search_config, monkeypatch):
    def not_a_number(config, **kwargs):
        result = fake_train(config, **kwargs)
        result.eval_loss_after = float("nan")
        return result

    monkeypatch.setattr(tune_module, "train", not_a_number)
    result = tune(load_config(search_config(trials=2)), console=quiet())
    assert [t.state for t in load_study(result.output_dir).trials] == [TrialState.FAIL] * 2
    assert result.finished == 0 and result.best_config is None
    assert not (result.output_dir / "best.yaml").exists()
    assert json.loads((result.output_dir / "trials.json").read_text())["best_trial"] is None


def test_sampled_values_apply_like_set_overrides(search_config, tmp_path):
    base = load_config(search_config())
    config = trial_config(base, {"train.learning_rate": 1e-5, "lora.r": 8, "data.replay.ratio": 0.3}, tmp_path / "t")
    assert config.train.learning_rate == 1e-5 and isinstance(config.train.learning_rate, float)
    assert config.lora.r == 8
    assert config.data.replay.ratio == 0.3  # a section the run file lacks is created, as --set does
    assert config.output_dir == tmp_path / "t" and config.tune is None
    assert config.train.model_copy(update={"learning_rate": base.train.learning_rate}) == base.train
    assert config.model == base.model and config.eval == base.eval


@pytest.mark.parametrize(
    "space, message",
    [
        ({"lora.rank": {"choices": [2, 4]}}, r"tune\.space\.lora\.rank: no such key; valid keys here: r, alpha"),
        ({"trian.epochs": {"int": [1, 2]}}, r"tune\.space\.trian\.epochs: trian: no such key; did you mean 'train'\?"),
        ({"lora.r": {"choices": [4, 0]}}, r"tune\.space\.lora\.r: Input should be greater than or equal to 1 \(got 0\)"),
        ({"train.warmup_ratio": {"uniform": [0.0, 1.0]}}, r"tune\.space\.train\.warmup_ratio: Input should be less than 1 \(got 1\.0\)"),
        ({"lora": {"choices": [4]}}, r"tune\.space\.lora: Input should be a valid dictionary"),
    ],
)
def test_bad_space_key_or_value_is_a_config_error_naming_it(search_config, space, message):
    path = search_config(space=space)
    config = load_config(path)
    line = space_line(path, next(iter(space)))
    with pytest.raises(ConfigError, match=message) as error:
        tune(config, console=quiet(), source=path)
    assert str(error.value).startswith(f"{path}:{line}: ")
    assert not (config.output_dir / DATABASE).exists()  # refused before anything was written


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"tune": None}, r"no tune section: add one .*\ntune:\n  trials: 10\n  space:"),
        ({"data.validation": []}, r"ranks trials by validation loss: name data\.validation files or set data\.val_split"),
        ({"eval.every_steps": None}, r"prunes trials on the validation loss every eval\.every_steps steps"),
    ],
)
def test_search_needs_a_tune_section_validation_data_and_eval_steps(search_config, overrides, message):
    path = search_config(**overrides)
    with pytest.raises(ConfigError, match=message):
        tune(load_config(path), console=quiet(), source=path)


def test_cli_refuses_zero_trials(search_config, capsys):
    assert main(["tune", str(search_config()), "--trials", "0"]) == 2
    assert "--trials 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "param, message",
    [
        ({"choices": [2], "int": [1, 2]}, "give exactly one of log_uniform, uniform, int, choices"),
        ({"log_uniform": [0.0, 1.0e-3]}, "log_uniform: low must be above 0"),
        ({"int": [4, 2]}, "int: low must be below high"),
        ({"chioces": [2, 4]}, "unknown key 'chioces'; did you mean 'choices'"),
        (8, r"give a range: \{log_uniform: \[low, high\]\}"),
    ],
)
def test_malformed_range_names_file_line_and_key(search_config, param, message):
    path = search_config(space={"lora.r": param})
    line = space_line(path, "lora.r")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:{line}: tune\.space\.lora\.r: {message}"):
        load_config(path)


def test_tune_section_round_trips_through_the_resolved_config(search_config, tmp_path):
    from tuneforge.config import dump_config

    config = load_config(search_config())
    dumped = yaml.safe_load(dump_config(config))
    assert dumped["tune"]["space"]["train.max_steps"] == {"int": [4, 6]}
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(dump_config(config))
    assert load_config(resolved) == config


@pytest.mark.usefixtures("one_thread")
def test_search_tunes_a_classifier(tmp_path, tiny_bert):
    """The classifier trains on the same step driver, so its validation loss prunes trials like a chat run's
    (before the driver, its own loop had no on_eval and the search could not run it)."""
    from tests.classify.conftest import write_config

    path = write_config(tmp_path, tiny_bert, **{
        "tune": {"trials": 2, "seed": 0, "space": {"train.learning_rate": {"log_uniform": [1.0e-3, 1.0e-2]}}},
        "train.max_steps": 4, "eval.every_steps": 2,
    })
    result = tune(load_config(path), console=quiet(), source=path)
    assert result.interrupted_by is None and result.finished == 2
    study = load_study(tmp_path / "run")
    assert all(t.state in FINISHED for t in study.trials)
    reported = [t for t in study.trials if t.intermediate_values]
    assert reported, "no trial reported a validation loss to the pruner"
    best = yaml.safe_load((tmp_path / "run" / "best.yaml").read_text())
    assert best["task"] == "classify"
