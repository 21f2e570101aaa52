"""From an OpenAI fine-tuning job request to a tuneforge run file: the one place that maps the two.

The run file is built in layers, each overriding the one before:
  1. defaults for a job: the base model, LoRA, no general-knowledge check (OpenAI jobs have none),
  2. what the method sets (METHODS: the OpenAI method type -> its run-file keys),
  3. the request's `tuneforge` field: any run-file keys, nested as in RUN.yaml, for what OpenAI's shape
     cannot say (lora.r, method: full, train.max_seq_length, data.packing ...),
  4. the OpenAI hyperparameters given as values ("auto" leaves the layer below in force),
  5. what only the server decides: data.train / data.validation (the stored files), output_dir, train.seed.
After the files are validated, the record count sets the cadence (`with_cadence`): a checkpoint at
each epoch's end or every tenth of the run, whichever comes first (what a pause, a cancel or a crash
resumes from), and the same for the validation loss when there is a validation file.

OpenAI's three methods map onto tuneforge tasks: supervised -> chat, dpo -> preference (sigmoid DPO,
`beta`), reinforcement -> grpo (its `grader` becomes the run's one reward; OpenAI's grader shapes are
tuneforge's, config/rewards.py). Each method also says how its files are checked (validate.py).
tests/platform/test_translate.py pins the mapping.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tuneforge.config import RunConfig, TrainConfig
from tuneforge.config.rewards import Grader, GRPOConfig
from tuneforge.platform.protocol import JobRequest
from tuneforge.platform.validate import check_files, check_prompts
from tuneforge.serve.errors import ApiError

DEFAULT_LR = TrainConfig().learning_rate  # learning_rate_multiplier 1 (and "auto") trains at tuneforge's default
SERVER_KEYS = ("output_dir", "data.train", "data.validation", "data.test", "tune")


def positive(name: str, integer: bool) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
            raise ValueError(f"{name} must be 'auto' or a positive {'integer' if integer else 'number'}")
        return value
    return check


@dataclass(frozen=True)
class Hyperparameter:
    """One OpenAI hyperparameter: the run-file key it sets, and how its value becomes that key's value."""

    key: str
    convert: Callable[[Any], Any]
    report: Callable[[RunConfig], Any]  # the value in force, as the job reports it


SUPERVISED = {
    "n_epochs": Hyperparameter("train.epochs", positive("n_epochs", True), lambda c: c.train.epochs),
    "batch_size": Hyperparameter("train.batch_size", positive("batch_size", True), lambda c: c.train.batch_size),
    "learning_rate_multiplier": Hyperparameter(
        "train.learning_rate", lambda v: positive("learning_rate_multiplier", False)(v) * DEFAULT_LR,
        lambda c: c.train.learning_rate / DEFAULT_LR),
}


DPO = {
    **SUPERVISED,
    "beta": Hyperparameter("preference.beta", positive("beta", False), lambda c: c.preference.beta),
}

DEFAULT_GROUP = GRPOConfig().num_generations


def group_size(value: Any) -> int:
    """compute_multiplier scales the answers sampled per prompt (OpenAI: compute spent exploring), at least 2."""
    return max(2, round(positive("compute_multiplier", False)(value) * DEFAULT_GROUP))


REINFORCEMENT = {
    **SUPERVISED,
    "compute_multiplier": Hyperparameter("grpo.num_generations", group_size,
                                         lambda c: c.grpo.num_generations / DEFAULT_GROUP),
    "eval_interval": Hyperparameter("eval.every_steps", positive("eval_interval", True),
                                    lambda c: c.eval.every_steps or "auto"),
    "eval_samples": Hyperparameter("grpo.eval_max_prompts", positive("eval_samples", True),
                                   lambda c: c.grpo.eval_max_prompts),
}


def grader_reward(grader: Any) -> dict[str, Any]:
    """OpenAI's `method.reinforcement.grader` as the run's one reward; 400 naming the grader's bad field."""
    try:
        TypeAdapter(Grader).validate_python(grader)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ApiError(400, f"method.reinforcement.grader{'.' + where if where else ''}: {error['msg']}",
                       param="method.reinforcement.grader", code="invalid_value") from None
    return {"rewards": [{"grader": grader, "weight": 1.0}]}


@dataclass(frozen=True)
class Method:
    run: dict[str, Any]  # dotted run-file keys the method sets
    hyperparameters: dict[str, Hyperparameter]
    check: Callable[..., int]  # (config, files, kinds) -> training records (validate.py)
    kinds: tuple[str, ...] = ()  # record kinds the method trains, for check_files
    settings: dict[str, Callable[[Any], dict[str, Any]]] = field(default_factory=dict)  # body field -> run keys
    required: tuple[str, ...] = ()  # body fields a request must give


# The OpenAI method type -> what it is in tuneforge.
METHODS: dict[str, Method] = {
    "supervised": Method({"task": "chat"}, SUPERVISED, check_files, ("chat", "text")),
    "dpo": Method({"task": "preference", "preference.loss": "dpo"}, DPO, check_files, ("preference",)),
    "reinforcement": Method({"task": "grpo"}, REINFORCEMENT, check_prompts, settings={"grader": grader_reward},
                            required=("grader",)),
}


@dataclass(frozen=True)
class Start:
    """What the job trains from: a base model reference, and for a fine-tune of a fine-tune its run directory."""

    model: str
    init_from: str | None = None


def method_of(request: JobRequest) -> tuple[str, dict[str, Any]]:
    """(method type, its hyperparameters as given); 400 for a method tuneforge does not train."""
    if request.method is None:
        return "supervised", dict(request.hyperparameters or {})
    kind = request.method.type
    if kind not in METHODS:
        raise ApiError(400, f"method.type must be one of {', '.join(METHODS)}, got '{kind}'",
                       param="method.type", code="invalid_value")
    if request.hyperparameters:
        raise ApiError(400, f"Give the hyperparameters in method.{kind}.hyperparameters, not also at the top level",
                       param="hyperparameters", code="invalid_value")
    body = method_body(request)
    for key in body:
        if key != "hyperparameters" and key not in METHODS[kind].settings:
            raise ApiError(400, f"Unknown or unsupported field 'method.{kind}.{key}'", param=f"method.{kind}.{key}",
                           code="unsupported_field")
    for key in METHODS[kind].required:
        if key not in body:
            raise ApiError(400, f"method.{kind}.{key} is required", param=f"method.{kind}.{key}",
                           code="missing_required_parameter")
    return kind, dict(body.get("hyperparameters") or {})


def method_body(request: JobRequest) -> dict[str, Any]:
    """`method.<type>` as given (empty for the top-level shape of a supervised job)."""
    if request.method is None:
        return {}
    return getattr(request.method, request.method.type, None) or {}


def run_file(request: JobRequest, start: Start, training: str, validation: str | None, run_dir: str,
             seed: int) -> dict:
    """The run file (a nested dict, as YAML would load it) for the request; 400 naming the field for a bad value."""
    kind, given = method_of(request)
    method = METHODS[kind]
    raw: dict = {"model": {"name": start.model}, "method": "lora", "eval": {"general_check": False}}
    if start.init_from:
        raw["model"]["init_from"] = start.init_from
    for key, value in method.run.items():
        set_key(raw, key, value)
    body = method_body(request)
    for name, to_run in method.settings.items():
        if name in body:
            for key, value in to_run(body[name]).items():
                set_key(raw, key, value)
    for key, value in (request.tuneforge or {}).items():
        merge(raw, key, value)
    for dotted in SERVER_KEYS:
        if has_key(request.tuneforge or {}, dotted):
            raise ApiError(400, f"tuneforge.{dotted} is set by the server (the job's files and run directory)",
                           param=f"tuneforge.{dotted}", code="invalid_value")
    for name, value in given.items():
        spec = method.hyperparameters.get(name)
        if spec is None:
            raise ApiError(400, f"Unknown hyperparameter '{name}' for method {kind}; known: "
                           f"{', '.join(method.hyperparameters)}", param=f"method.{kind}.hyperparameters.{name}",
                           code="unsupported_field")
        if value != "auto":
            try:
                set_key(raw, spec.key, spec.convert(value))
            except ValueError as exc:
                raise ApiError(400, str(exc), param=f"method.{kind}.hyperparameters.{name}",
                               code="invalid_value") from None
    set_key(raw, "data.train", [training])
    set_key(raw, "data.validation", [validation] if validation else [])
    set_key(raw, "train.seed", seed)
    raw["output_dir"] = run_dir
    return raw


def validated(raw: dict) -> RunConfig:
    """The run file checked as `tuneforge train` checks it; a bad key is a 400 naming it under `tuneforge.`."""
    try:
        return RunConfig.model_validate(copy.deepcopy(raw))
    except ValidationError as exc:
        error = exc.errors()[0]
        message = error["msg"].removeprefix("Value error, ")
        location = ".".join(str(part) for part in error["loc"])
        if not location:  # a rule across sections: its message starts with the key it is about
            location, _, message = message.partition(" ")
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise ApiError(400, f"The run file this job makes is invalid: {location}: {message}{more}",
                       param=f"tuneforge.{location}", code="invalid_run_file") from None


def reported(kind: str, config: RunConfig, body: dict[str, Any] | None = None) -> dict:
    """OpenAI's method object with the values in force (what "auto" became) and the other fields as given."""
    values = {name: spec.report(config) for name, spec in METHODS[kind].hyperparameters.items()}
    given = {key: value for key, value in (body or {}).items() if key != "hyperparameters"}
    return {"type": kind, kind: {**given, "hyperparameters": values}}


def with_cadence(raw: dict, config: RunConfig, records: int) -> tuple[dict, int]:
    """(the run file with checkpoint and validation cadence for `records` training records, its total steps)."""
    train = config.train
    per_epoch = max(1, math.ceil(math.ceil(records / train.batch_size) / train.grad_accum))
    total = train.max_steps or max(1, math.ceil(per_epoch * train.epochs))
    every = max(1, min(per_epoch, math.ceil(total / 10)))
    raw = copy.deepcopy(raw)
    if config.checkpoint.every_steps is None:
        set_key(raw, "checkpoint.every_steps", every)
    if config.data.validation and config.eval.every_steps is None:
        set_key(raw, "eval.every_steps", every)
    return raw, total


def set_key(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def has_key(raw: dict, dotted: str) -> bool:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def merge(raw: dict, key: str, value: Any) -> None:
    """Deep-merge `value` into raw[key]: mappings key by key, anything else replaces."""
    if isinstance(value, dict) and isinstance(raw.get(key), dict):
        for inner, item in value.items():
            merge(raw[key], inner, item)
    else:
        raw[key] = copy.deepcopy(value)
