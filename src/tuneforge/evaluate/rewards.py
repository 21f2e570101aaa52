"""Rewards of sampled answers: the run file's weighted reward functions and graders, called and checked.

A Python reward has TRL's keyword signature, so a function written for TRL's GRPOTrainer works
unchanged: `fn(prompts=..., completions=..., completion_ids=..., **columns)` where `columns` are
the dataset's other fields, one list entry per answer; prompts and completions are strings for a
plain-text prompt and message lists for a conversational one (`[{"role": "assistant", "content": ...}]`).
It returns one float per answer, or None for "no opinion" (that answer's reward is then left out of
this reward's mean and adds 0 to the total).  A grader (evaluate/graders.py) scores one answer at a time.

A reward that raises, answers the wrong number of scores or something that is not a number, or takes
longer than `grpo.reward_timeout_s`, stops the run with a RewardError naming the reward and the prompt
(tests/train/test_grpo.py).  A timed-out call cannot be killed in a thread: it is left to finish on
its own while the run stops.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tuneforge.config.rewards import RewardConfig
from tuneforge.errors import ConfigError, RewardError
from tuneforge.evaluate.graders import build_grader

RewardFunction = Callable[..., Sequence[float | None]]


@dataclass(frozen=True)
class Reward:
    name: str
    weight: float
    function: RewardFunction  # TRL's keyword signature
    wants_rows: bool = False  # a grader: also given `rows`, the whole dataset row of each answer


@dataclass(frozen=True)
class Scores:
    """Each reward's scores (None: no opinion) and the weighted total, one entry per answer."""

    per_reward: dict[str, list[float | None]]
    total: list[float]


def load_function(spec: str) -> RewardFunction:
    """`module:function` or `path/to/file.py:function` (a path relative to the working directory)."""
    source, _, name = spec.rpartition(":")
    try:
        if source.endswith(".py"):
            path = Path(source).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"reward {spec!r}: file not found: {path}")
            module_spec = importlib.util.spec_from_file_location(f"tuneforge_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(source)
    except ImportError as exc:
        raise ConfigError(f"reward {spec!r}: cannot import {source!r} ({exc})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"reward {spec!r}: {source} has no function {name!r}")
    return function


def grader_function(config: RewardConfig) -> RewardFunction:
    """A grader as a TRL-style reward: each answer scored against its own row."""
    grade = build_grader(config.grader)

    def reward(prompts, completions, rows, **_) -> list[float]:
        return [grade({"output_text": answer_text(c)}, row) for c, row in zip(completions, rows)]

    return reward


def load_rewards(configs: list[RewardConfig]) -> list[Reward]:
    rewards, names = [], set()
    for config in configs:
        name = config.name
        while name in names:  # two rewards of one name (two string_checks) get suffixes
            name = f"{name}_{len(names)}"
        names.add(name)
        function = load_function(config.function) if config.function else grader_function(config)
        rewards.append(Reward(name, config.weight, function, wants_rows=config.grader is not None))
    return rewards


def answer_text(completion) -> str:
    """The text of a completion in either of TRL's formats (a string, or a list of messages)."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def score(rewards: list[Reward], rows: list[dict], texts: list[str], completion_ids: list[list[int]],
          timeout_s: float) -> Scores:
    """Every reward on every answer; `rows[i]` is the dataset row whose prompt answer `texts[i]` answers."""
    conversational = [not isinstance(row["prompt"], str) for row in rows]
    prompts = [row["prompt"] for row in rows]
    completions = [[{"role": "assistant", "content": t}] if conv else t for t, conv in zip(texts, conversational)]
    columns = {key: [row.get(key) for row in rows] for key in rows[0] if key != "prompt"} if rows else {}
    per_reward: dict[str, list[float | None]] = {}
    for reward in rewards:
        kwargs = dict(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        if reward.wants_rows:
            kwargs["rows"] = rows
        values = call_with_timeout(reward, kwargs, timeout_s, prompts)
        per_reward[reward.name] = checked(reward, values, prompts)
    total = [sum(r.weight * (per_reward[r.name][i] or 0.0) for r in rewards) for i in range(len(texts))]
    return Scores(per_reward, total)


def call_with_timeout(reward: Reward, kwargs: dict, timeout_s: float, prompts: list) -> object:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = reward.function(**kwargs)
        except BaseException as exc:  # reported on the calling thread with the reward's name
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True, name=f"reward-{reward.name}")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise RewardError(f"reward {reward.name} took longer than grpo.reward_timeout_s ({timeout_s:g} s) on a batch "
                          f"starting with the prompt {short(prompts[0])}")
    if "error" in outcome:
        exc = outcome["error"]
        prompt = prompts[getattr(exc, "index", 0)] if prompts else ""
        raise RewardError(f"reward {reward.name} raised {type(exc).__name__}: {exc} (on a batch starting with the "
                          f"prompt {short(prompt)})") from exc
    return outcome["value"]


def checked(reward: Reward, values: object, prompts: list) -> list[float | None]:
    """The scores as floats, or a RewardError naming the reward and the prompt of the first bad one."""
    if not isinstance(values, (list, tuple)) and not hasattr(values, "tolist"):
        raise RewardError(f"reward {reward.name} returned {type(values).__name__}, not a list of scores "
                          f"(prompt {short(prompts[0])})")
    values = list(values.tolist() if hasattr(values, "tolist") else values)
    if len(values) != len(prompts):
        raise RewardError(f"reward {reward.name} returned {len(values)} scores for {len(prompts)} answers "
                          f"(batch starting with the prompt {short(prompts[0])})")
    scores: list[float | None] = []
    for value, prompt in zip(values, prompts):
        if value is None:
            scores.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise RewardError(f"reward {reward.name} returned {value!r}, not a number, for the prompt {short(prompt)}")
        scores.append(float(value))
    return scores


def short(prompt) -> str:
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    return repr(text if len(text) <= 120 else text[:117] + "...")
