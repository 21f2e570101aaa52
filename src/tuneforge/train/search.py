"""Hyperparameter search (`tuneforge tune`): Optuna trials of a run file, pruned on validation loss, resumable.

Optuna (DESIGN.md) brings the TPE sampler, median pruning and a study kept in SQLite
(OUTPUT/tune.db), which outlives the process: `--resume` continues a search that a crash, a
kill or Ctrl-C stopped, until `tune.trials` trials have finished (completed or pruned).

A trial is an ordinary training run in OUTPUT/trial-NNN.  Its config is the run file with the
sampled values applied exactly as `--set KEY=VALUE` applies them (one code path, so a space key
means what it means on the command line), and its objective is the final validation loss.  After
each periodic validation (eval.every_steps, which a search therefore requires) the loss is
reported to the trial, and a trial the median pruner gives up on ends at once.

A trial a killed process left RUNNING, or one Ctrl-C stopped, is marked FAIL on resume (it never
counts) and its values are queued to run again as a new trial.  The sampler is seeded with
`tune.seed + trials so far`: a fresh search is reproducible, and a resumed one does not draw
the same values again.  One search process per output directory.
"""

from __future__ import annotations

import difflib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from tuneforge.config import ParamRange, RunConfig, TuneConfig, apply_override, dump_config, valid_keys, yaml_line
from tuneforge.errors import ConfigError, RunDirError, TuneforgeError
from tuneforge.files import write_atomic
from tuneforge.train.driver import train

try:
    import optuna
    from optuna.trial import TrialState
except ImportError:  # pragma: no cover - optuna is a dependency; this keeps the message plain
    optuna = None

STUDY = "tuneforge"
DATABASE = "tune.db"
EXAMPLE = """\
tune:
  trials: 10
  space:
    train.learning_rate: {log_uniform: [1.0e-5, 1.0e-3]}
    lora.r: {choices: [8, 16, 32]}
    train.epochs: {int: [1, 4]}
eval:
  every_steps: 10   # validation loss every 10 steps: what pruning compares"""


@dataclass
class TuneResult:
    output_dir: Path
    trials: int  # the number of trials to finish
    finished: int  # completed or pruned so far
    best_trial: int | None
    best_value: float | None
    best_config: Path | None  # OUTPUT/best.yaml, a run file for `tuneforge train`
    interrupted_by: str | None  # "SIGINT" / "SIGTERM" when a signal stopped the search; None when done


class SearchStopped(Exception):
    """A signal ended a trial's training: the trial fails (Optuna records it) and the search stops."""

    def __init__(self, signal_name: str):
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name


def tune(
    config: RunConfig,
    trials: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    source: Path | None = None,
) -> TuneResult:
    """Run (or with `resume`, continue) the search the run file's tune section describes.

    `trials` overrides tune.trials; `source` (the run file) only makes messages name it.
    """
    if optuna is None:
        raise TuneforgeError("the hyperparameter search needs optuna: pip install optuna")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials {trials}: a search needs at least 1 trial")
    console = console or Console(stderr=True)
    settings = check_search(config, source)
    target = trials or settings.trials
    output_dir = config.output_dir
    storage = open_storage(output_dir, resume, overwrite, console)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported below, without tracebacks
    try:
        study = optuna.create_study(study_name=STUDY, storage=storage, direction="minimize", load_if_exists=resume,
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
        retry_interrupted(study, console)
        study.sampler = optuna.samplers.TPESampler(seed=settings.seed + len(study.trials),
                                                   n_startup_trials=max(2, min(10, target // 3)))
        interrupted_by = None
        if finished(study) < target:
            console.print(f"search: {target - finished(study)} more trial(s) of {target}, {len(settings.space)} "
                          f"key(s); study {storage}")
            try:
                study.optimize(objective(config, settings, target, console), catch=(torch.OutOfMemoryError,),
                               callbacks=[after_trial(target, console)], gc_after_trial=True)
            except SearchStopped as exc:
                interrupted_by = exc.signal_name
            except KeyboardInterrupt:
                interrupted_by = "SIGINT"
        return report(study, config, target, interrupted_by, console)
    finally:
        optuna.logging.set_verbosity(verbosity)


def check_search(config: RunConfig, source: Path | None) -> TuneConfig:
    """Everything a search needs, checked before the first trial trains: each failure names its key."""
    where = f"{source}: " if source else ""
    if config.tune is None:
        raise ConfigError(f"{where}no tune section: add one to say what to search, e.g.\n{EXAMPLE}")
    check_trial_run(config, where)
    text = source.read_text(encoding="utf-8") if source else ""
    for key, param in config.tune.space.items():
        line = yaml_line(text, ("tune", "space", key)) if source else None
        spot = f"{source}:{line}: " if line else where
        for value in candidates(param):
            try:
                check_trial_run(trial_config(config, {key: value}, config.output_dir), "")
            except ConfigError as exc:
                raise ConfigError(f"{spot}tune.space.{key}: {str(exc).removeprefix(key + ': ')}") from None
    return config.tune


def check_trial_run(config: RunConfig, where: str) -> None:
    if not config.data.validation and config.data.val_split == 0:
        raise ConfigError(f"{where}the search ranks trials by validation loss: name data.validation files "
                          "or set data.val_split (e.g. 0.1)")
    if config.eval.every_steps is None:
        raise ConfigError(f"{where}the search prunes trials on the validation loss every eval.every_steps steps: "
                          "set eval.every_steps (e.g. a quarter of a trial's steps)")


def candidates(param: ParamRange) -> list[Any]:
    """The values that stand for a range when checking it: its ends, or every choice."""
    return list(param.log_uniform or param.uniform or param.integer or param.choices or [])


def trial_config(base: RunConfig, values: dict[str, Any], output_dir: Path) -> RunConfig:
    """The run `values` (dotted key -> value) make of `base`, applied as `--set KEY=VALUE` would be.

    Only the keys the run file set are carried over (not every default), so `data.replay.ratio`
    turns replay on here just as it does on the command line.  The trial has no tune section.
    """
    raw = base.model_dump(mode="json", exclude_unset=True)
    raw.pop("tune", None)
    for key, value in values.items():
        text = yaml.safe_dump(value, default_flow_style=True).removesuffix("...\n").strip()
        apply_override(raw, f"{key}={text}")  # not json.dumps: PyYAML reads its 1e-05 as a string
    raw["output_dir"] = str(output_dir)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("; ".join(describe(error) for error in exc.errors())) from None


def describe(error: dict) -> str:
    """One validation error of a trial's config as `key: problem`, in the words of describe_errors."""
    loc = tuple(str(part) for part in error["loc"])
    dotted = ".".join(loc)
    if error["type"] == "extra_forbidden":
        valid = valid_keys(error["loc"][:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(valid)}"
        return f"{dotted}: no such key; {hint}"
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a check across sections: its message names its keys
        return message
    got = f" (got {error['input']!r})" if error["type"] != "missing" and "input" in error else ""
    return f"{dotted}: {message}{got}"


def open_storage(output_dir: Path, resume: bool, overwrite: bool, console: Console) -> str:
    """The study's SQLite URL; refuses to start over an existing search unless told which to do."""
    database = output_dir / DATABASE
    if database.exists() and not resume:
        if not overwrite:
            raise RunDirError(f"{output_dir} already holds a search ({DATABASE}); pass --resume to continue it, "
                              "--overwrite to replace it, or set output_dir to a new directory")
        shutil.rmtree(output_dir)
    if resume and not database.exists():
        console.print(f"no search in {output_dir}; starting one")
    output_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{database}"


def finished(study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def retry_interrupted(study, console: Console) -> None:
    """Fail the trials a killed process left RUNNING; queue every interrupted trial's values once more."""
    killed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in killed:
        study.tell(number, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for trial in trials:
        interrupted = trial.number in killed or "interrupted" in trial.user_attrs
        if trial.state == TrialState.FAIL and interrupted and trial.number not in retried:
            console.print(f"trial {trial.number} was interrupted; its values run again as a new trial")
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def objective(base: RunConfig, settings: TuneConfig, target: int, console: Console):
    """One trial: sample, train in OUTPUT/trial-NNN, report each validation loss, return the final one."""

    def run_trial(trial) -> float:
        values = {key: suggest(trial, key, param) for key, param in settings.space.items()}
        config = trial_config(base, values, base.output_dir / f"trial-{trial.number:03d}")
        trial.set_user_attr("run_dir", str(config.output_dir))
        retry_of = trial.user_attrs.get("retry_of")
        again = f" (again: trial {retry_of} was interrupted)" if retry_of is not None else ""
        console.print(f"[bold]trial {trial.number}[/] ({finished(trial.study) + 1}/{target}): {show(values)}{again}")

        def on_eval(step: int, loss: float) -> bool:
            trial.report(loss, step)
            return trial.should_prune()

        try:
            result = train(config, overwrite=True, console=console, on_eval=on_eval)
        except KeyboardInterrupt:  # outside the training loop's own signal handling
            trial.set_user_attr("interrupted", "SIGINT")
            raise
        except torch.OutOfMemoryError:  # too big for the device with these values: the search goes on
            trial.set_user_attr("error", "out of memory")
            torch.cuda.empty_cache()
            raise
        trial.set_user_attr("steps", result.state.step)
        if result.interrupted_by == "stop":  # on_eval said prune
            raise optuna.TrialPruned(f"pruned at step {result.state.step}")
        if result.interrupted_by:
            trial.set_user_attr("interrupted", result.interrupted_by)
            raise SearchStopped(result.interrupted_by)
        if result.eval_loss_after is None:
            raise ConfigError(f"trial {trial.number} has no validation loss (no validation records?)")
        return result.eval_loss_after

    return run_trial


def suggest(trial, key: str, param: ParamRange) -> Any:
    if param.log_uniform:
        return trial.suggest_float(key, *param.log_uniform, log=True)
    if param.uniform:
        return trial.suggest_float(key, *param.uniform)
    if param.integer:
        return trial.suggest_int(key, *param.integer)
    return trial.suggest_categorical(key, param.choices)


def after_trial(target: int, console: Console):
    """Print how a trial ended; stop once `target` trials finished (or as many failed in this process)."""
    failures = 0

    def callback(study, trial) -> None:
        nonlocal failures
        if trial.state == TrialState.COMPLETE:
            best = " (best so far)" if study.best_trial.number == trial.number else ""
            console.print(f"trial {trial.number}: eval_loss {trial.value:.4f}{best}")
        elif trial.state == TrialState.PRUNED:
            console.print(f"trial {trial.number}: pruned at step {trial.last_step} "
                          f"(eval_loss {trial.value:.4f}, worse than the median of earlier trials there)")
        else:
            failures += 1
            reason = trial.user_attrs.get("error", "its validation loss is not a number")
            console.print(f"[yellow]trial {trial.number} failed:[/] {reason}")
        if finished(study) >= target or failures >= target:
            study.stop()

    return callback


def show(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={number(value)}" for key, value in values.items())


def number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def report(study, base: RunConfig, target: int, interrupted_by: str | None, console: Console) -> TuneResult:
    """The trials table on the console; trials.json, optimization_history.png and best.yaml in OUTPUT."""
    output_dir = base.output_dir
    trials = [t for t in study.get_trials() if t.state != TrialState.WAITING]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    console.print(trials_table(trials, best, f"search {output_dir}: {finished(study)}/{target} trials finished"))
    write_atomic(output_dir / "trials.json", json.dumps(trials_summary(trials, best, target), indent=2) + "\n")
    plot_history(trials, output_dir / "optimization_history.png")
    best_path = None
    if best is not None:
        best_path = output_dir / "best.yaml"
        config = trial_config(base, best.params, output_dir / "best")
        header = (f"# The best trial of the search in {output_dir}: trial {best.number}, eval_loss {best.value:.6g}\n"
                  f"# sampled: {show(best.params)}\n# run it: tuneforge train {best_path}\n")
        write_atomic(best_path, header + dump_config(config))
        console.print(f"best: trial {best.number} (eval_loss {best.value:.4f}) -> {best_path}")
    return TuneResult(output_dir, target, finished(study), best.number if best else None,
                      best.value if best else None, best_path, interrupted_by)


def trials_table(trials: list, best, title: str) -> Table:
    keys = list(dict.fromkeys(key for t in trials for key in t.params))
    interrupted = interrupted_trials(trials)
    table = Table(title=title)
    table.add_column("trial", justify="right")
    table.add_column("state")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_column("eval_loss", justify="right")
    table.add_column("steps", justify="right")
    for t in trials:
        state = "interrupted" if t.number in interrupted else t.state.name.lower()
        state += " (best)" if best is not None and t.number == best.number else ""
        params = [number(t.params[k]) if k in t.params else "" for k in keys]
        value = f"{t.value:.4f}" if t.value is not None else ""
        table.add_row(str(t.number), state, *params, value, str(t.user_attrs.get("steps", "")),
                      style="bold green" if "best" in state else None)
    return table


def interrupted_trials(trials: list) -> set[int]:
    """Failed trials that a signal stopped (marked so) or a kill did (their values were queued again)."""
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return {t.number for t in trials
            if t.state == TrialState.FAIL and ("interrupted" in t.user_attrs or t.number in retried)}


def trials_summary(trials: list, best, target: int) -> dict:
    interrupted = interrupted_trials(trials)
    return {
        "metric": "eval_loss",
        "direction": "minimize",
        "trials_to_finish": target,
        "best_trial": best.number if best else None,
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "value": t.value,
                "intermediate_values": {str(step): v for step, v in sorted(t.intermediate_values.items())},
                "steps": t.user_attrs.get("steps"),
                "run_dir": t.user_attrs.get("run_dir"),
                "retry_of": t.user_attrs.get("retry_of"),
                "interrupted": t.number in interrupted,
                "duration_s": t.duration.total_seconds() if t.duration else None,
            }
            for t in trials
        ],
    }


def plot_history(trials: list, path: Path) -> None:
    """Each trial's final loss (pruned ones: their last reported loss) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    kinds = ((TrialState.COMPLETE, "o", "complete"), (TrialState.PRUNED, "x", "pruned (its last loss)"))
    for state, marker, label in kinds:
        points = [(t.number, t.value) for t in trials if t.state == state and t.value is not None]
        if points:
            axis.plot(*zip(*points), marker, label=label, linestyle="none")
    running, best_line = math.inf, []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and t.value is not None:
            running = min(running, t.value)
            best_line.append((t.number, running))
    if best_line:
        best_line.append((max(t.number for t in trials), running))  # carried on to the last trial
        axis.step(*zip(*best_line), where="post", label="best so far")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.set_xlabel("trial")
    axis.set_ylabel("validation loss")
    axis.set_title("optimization history")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
