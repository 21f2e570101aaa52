"""The run configuration: one YAML file, validated before any work starts.

Every section is a small pydantic model that forbids unknown keys, so a misspelled key
stops the run with the file, the line and the closest valid key instead of being
silently ignored (the most expensive kind of typo: you find out after the run).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneforge.errors import ConfigError

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field(DEFAULT_MODEL, description="local HF directory, hub id, PATH.gguf, or embedded:NAME")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: training in bf16 (a LoRA base in bfloat16, bf16 autocast) where bf16 is native: CUDA, "
        "CPUs with AVX512-BF16 or AMX; float32 elsewhere. Inference: bfloat16 on CUDA, float32 on CPU"
    )
    quantize: Literal["4bit"] | None = Field(
        None, description="4bit: QLoRA, the frozen base in 4-bit NF4 (bitsandbytes, CUDA only; method lora)"
    )
    init_from: Path | None = Field(
        None, description="start from a fine-tune's weights (a run directory, checkpoint or saved model) rather than "
        "name's; name stays the base model it was trained from (a LoRA start keeps its adapter's r, alpha, modules)"
    )

    @field_validator("init_from")
    @classmethod
    def _holds_a_fine_tune(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        from tuneforge.errors import ModelError
        from tuneforge.models.load import saved_fine_tune

        try:
            saved_fine_tune(path)
        except ModelError as exc:
            raise ValueError(str(exc)) from None
        return path.resolve()


def existing_file(path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        raise ValueError(f"file not found: {path} (relative paths are read from {Path.cwd()})")
    return path.resolve() if path else None


class ReplayConfig(Section):
    ratio: float = Field(0.25, ge=0.0, lt=1.0, description="fraction of training records drawn from replay")
    data: list[Path] = Field(
        default_factory=list, description="general data to replay; empty: self-replay (the base model's answers)"
    )
    prompts: Path | None = Field(None, description="self-replay prompt set (JSONL of prompts); default: the shipped set")
    max_new_tokens: int = Field(128, ge=1, description="length limit of the base model's self-replay answers")

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, Path)) else value

    @field_validator("data")
    @classmethod
    def _data_exist(cls, paths: list[Path]) -> list[Path]:
        return [existing_file(path) for path in paths]

    @field_validator("prompts")
    @classmethod
    def _prompts_exist(cls, path: Path | None) -> Path | None:
        return existing_file(path)


def existing_source(text: str) -> str:
    """A data source: a file, a folder, a glob pattern with matches, or hf:NAME[#SPLIT]."""
    import glob

    text = str(text)
    if text.startswith("hf:"):
        if len(text) <= 3:
            raise ValueError("hf: needs a dataset name, e.g. hf:tatsu-lab/alpaca")
        return text
    if glob.has_magic(text):
        pattern = str(Path(text).expanduser().absolute())
        if not glob.glob(pattern, recursive=True):
            raise ValueError(f"no files match {text} (relative paths are read from {Path.cwd()})")
        return pattern
    path = Path(text).expanduser()
    if not path.exists():
        raise ValueError(f"file not found: {path} (relative paths are read from {Path.cwd()})")
    return str(path.resolve())


class CleanConfig(Section):
    dedup: bool = Field(True, description="drop exact duplicates (after case and whitespace normalisation)")
    near_dedup: bool = Field(False, description="drop near duplicates (MinHash/LSH over word shingles)")
    near_dedup_threshold: float = Field(0.85, gt=0.0, le=1.0, description="estimated Jaccard similarity")
    min_tokens: int | None = Field(None, ge=1, description="drop records shorter than this (tokens)")
    max_tokens: int | None = Field(None, ge=1, description="drop records longer than this (tokens)")
    redact_pii: bool = Field(False, description="replace emails, phones, IPs, card numbers with placeholders")
    contamination: Literal["off", "report", "remove"] = Field(
        "report", description="validation/test prompts that overlap training prompts: report, or remove from training"
    )
    contamination_ngram: int = Field(8, ge=1, description="n-gram size (words) of the contamination check")


class DataConfig(Section):
    train: list[str] = Field(description="training data: files, folders, glob patterns or hf:NAME[#SPLIT]")
    validation: list[str] = Field(default_factory=list, description="held-out data for validation loss")
    test: list[str] = Field(default_factory=list, description="final-test data, kept apart from training")
    format: Literal["auto", "chat", "sharegpt", "alpaca", "preference", "feedback", "text", "classification"] = Field(
        "auto", description="auto: detected from each file's first record"
    )
    columns: dict[str, str] = Field(default_factory=dict, description="canonical key -> the file's key")
    roles: dict[str, str] = Field(default_factory=dict, description="the file's role name -> system/user/assistant/tool")
    template: Literal["tokenizer", "chatml", "llama3", "alpaca"] = Field(
        "tokenizer", description="chat template: the tokenizer's own, or a built-in one for base models"
    )
    on_invalid: Literal["error", "skip"] = Field(
        "error", description="error: stop and report every bad record; skip: drop them and write the report"
    )
    val_split: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of train held out when no validation files")
    test_split: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of train held out when no test files")
    packing: bool = Field(False, description="pack several examples into each sequence (no attention across them)")
    split_long_texts: bool = Field(
        False, description="cut text records longer than train.max_seq_length into consecutive blocks (continued "
        "pretraining; on by default with task: pretrain) instead of rejecting them"
    )
    clean: CleanConfig = Field(default_factory=CleanConfig)
    replay: ReplayConfig | None = Field(None, description="mix general data into training against forgetting")

    @field_validator("train", "validation", "test", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, Path)) else value

    @field_validator("train", "validation", "test")
    @classmethod
    def _sources_exist(cls, sources: list[str]) -> list[str]:
        return [existing_source(source) for source in sources]

    @field_validator("train")
    @classmethod
    def _not_empty(cls, sources: list[str]) -> list[str]:
        if not sources:
            raise ValueError("name at least one training file")
        return sources

    @field_validator("roles")
    @classmethod
    def _canonical_roles(cls, roles: dict[str, str]) -> dict[str, str]:
        for name, role in roles.items():
            if role not in ("system", "user", "assistant", "tool", "function_call"):
                raise ValueError(f"roles.{name}: {role!r} is not one of system, user, assistant, tool, function_call")
        return roles

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> DataConfig:
        if self.val_split + self.test_split >= 1.0:
            raise ValueError("val_split + test_split must leave some training data (sum below 1)")
        return self


class LoraConfig(Section):
    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names")


class TrainConfig(Section):
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    warmup_steps: int | None = Field(None, ge=0, description="overrides warmup_ratio when set")
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_seq_length: int = Field(1024, ge=8)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 42
    log_every: int = Field(1, ge=1)
    threads: int | None = Field(
        None, ge=1, description="CPU threads for torch (default: one per core); small models on a busy CPU run faster on 1"
    )
    kl_to_base: float = Field(
        0.0, ge=0.0, description="weight of KL(base || tuned) on replay tokens; lora only, needs data.replay"
    )
    chunked_loss: bool = Field(True, description="LM head + cross-entropy over trained positions, a chunk at a time")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less memory, ~30% slower")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with several processes (--nproc): ddp replicates the model, fsdp shards it (CUDA only)"
    )
    preflight: Literal["refuse", "warn", "off"] = Field(
        "refuse", description="memory/time estimate before training: refuse (or only warn about) a run that cannot fit"
    )
    return_freed_memory: bool = Field(
        False, description="CPU: hand freed activation memory back to the system at once: lower peak RSS, slower steps"
    )
    compile: bool = Field(False, description="torch.compile each decoder layer (one compile, reused); see bench/RESULTS.md")
    fused_kernels: bool = Field(
        False, description="on CUDA, Liger's Triton kernels (RMSNorm, SwiGLU, RoPE) if installed; slower in bench/RESULTS.md"
    )

    @field_validator("preflight", mode="before")
    @classmethod
    def _preflight_words(cls, value: Any) -> Any:
        """YAML reads a bare `off` as false (and `on` as true): take those as the words they were."""
        return {False: "off", True: "refuse"}.get(value, value) if isinstance(value, bool) else value


class EvalConfig(Section):
    every_steps: int | None = Field(None, ge=1, description="validation loss cadence; also at start and end")
    batch_size: int = Field(8, ge=1)
    prompts: Path | None = Field(None, description="JSONL of held-out prompts answered before and after")
    max_new_tokens: int = Field(64, ge=1)
    general_check: bool = Field(True, description="score general questions before and after training")
    general_questions: Path | None = Field(None, description="JSONL of prompt + accept; default: the shipped set")
    metrics: list[str] = Field(
        default_factory=lambda: ["exact_match", "token_f1"],
        description="generation metrics: exact_match, contains, token_f1, rouge_l, bleu, or module:function",
    )
    max_examples: int | None = Field(64, ge=1, description="validation examples generated for metrics during training")
    best_metric: str = Field("eval_loss", description="keep the checkpoint best by this (eval_loss or a metric)")
    early_stopping_patience: int | None = Field(None, ge=1, description="stop after N evaluations without improvement")
    general_text: Path | None = Field(None, description="text records for perplexity_general; default: the shipped set")
    max_general_perplexity_rise: float = Field(0.10, ge=0.0, description="warn when perplexity_general rises more")
    gates: list[str] = Field(default_factory=list, description='thresholds, e.g. "exact_match >= 0.8", "f1 >= base + 0.05"')

    @field_validator("prompts", "general_questions", "general_text")
    @classmethod
    def _prompts_exist(cls, path: Path | None) -> Path | None:
        return existing_file(path)

    @model_validator(mode="after")
    def _patience_needs_evaluations(self) -> EvalConfig:
        if self.early_stopping_patience and not self.every_steps:
            raise ValueError("early_stopping_patience counts periodic evaluations; set eval.every_steps too")
        return self

    @field_validator("metrics")
    @classmethod
    def _metrics_exist(cls, names: list[str]) -> list[str]:
        from tuneforge.evaluate.metrics import generation_metric

        return each_checked(generation_metric, names)

    @field_validator("gates")
    @classmethod
    def _gates_parse(cls, gates: list[str]) -> list[str]:
        from tuneforge.evaluate.gates import parse_gate

        return each_checked(parse_gate, gates)


def each_checked(check, items: list[str]) -> list[str]:
    """Run `check` on each item; its ConfigError becomes a ValueError, for which pydantic adds the file and line."""
    for item in items:
        try:
            check(item)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return items


class ClassifyConfig(Section):
    """Settings of `task: classify`: a classification head on the model, trained on text + label records."""

    multi_label: bool | None = Field(
        None, description="several labels per text (sigmoid + threshold); default: true when the data's labels are lists"
    )
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="multi-label: a label is predicted at this probability")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced: weight each class's loss by records / (classes x its records), for imbalanced data"
    )
    labels: list[str] | None = Field(
        None, min_length=2, description="the label set, in this order; default: every training label, sorted"
    )

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None:
            labels = [str(label).strip() for label in labels]
            repeated = sorted({label for label in labels if labels.count(label) > 1})
            if repeated or not all(labels):
                raise ValueError(f"labels must be distinct, non-empty names (repeated: {repeated or 'an empty name'})")
        return labels


# --- preference training (task: preference, task: kto); issue 18 -------------------------------------
class PreferenceConfig(Section):
    """Settings of `task: preference`: pairs of a preferred and a rejected reply (DPO family, ORPO, SimPO)."""

    loss: Literal["dpo", "ipo", "orpo", "simpo"] = Field(
        "dpo", description="dpo: sigmoid DPO; ipo: squared loss to 1/(2 beta); orpo and simpo need no reference model"
    )
    beta: float = Field(0.1, gt=0.0, description="dpo/ipo: strength of the reference; orpo: odds-ratio weight "
                        "(lambda); simpo: reward scale")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="dpo: conservative DPO, the chance a label is flipped")
    sft_weight: float = Field(0.0, ge=0.0, description="weight of the chosen reply's NLL per token (RPO); orpo has its own")
    simpo_gamma: float = Field(0.5, ge=0.0, description="simpo: the target reward margin (gamma; TRL's gamma/beta x beta)")
    reference: Literal["auto", "adapter_off", "frozen_copy", "precomputed"] = Field(
        "auto", description="dpo/ipo reference: adapter_off (LoRA: the adapter switched off), frozen_copy (full: a "
        "second copy), precomputed (log-probs of the starting weights, computed once and cached); auto: adapter_off "
        "for a fresh LoRA run, precomputed otherwise (a run from model.init_from, a full fine-tune)"
    )


class KTOConfig(Section):
    """Settings of `task: kto`: unpaired replies labelled desirable or not (thumbs up/down)."""

    beta: float = Field(0.1, gt=0.0)
    desirable_weight: float = Field(1.0, gt=0.0, description="weight of a desirable reply's loss")
    undesirable_weight: float = Field(1.0, gt=0.0, description="weight of an undesirable reply's loss")
    reference: Literal["auto", "adapter_off", "frozen_copy", "precomputed"] = Field(
        "auto", description="as preference.reference"
    )


PREFERENCE_TASKS = ("preference", "kto")


def preference_settings_fit(config: RunConfig) -> None:
    """A preference section only with its task; replay, packing and kl_to_base belong to chat SFT."""
    if config.task != "preference" and config.preference != PreferenceConfig():
        raise ValueError("preference applies to task: preference (set task: preference, or remove the section)")
    if config.task != "kto" and config.kto != KTOConfig():
        raise ValueError("kto applies to task: kto (set task: kto, or remove the section)")
    if config.task not in PREFERENCE_TASKS:
        return
    for key, given in (("data.replay", config.data.replay is not None), ("data.packing", config.data.packing),
                       ("train.kl_to_base", config.train.kl_to_base > 0),
                       ("model.quantize", config.model.quantize is not None)):
        if given:
            raise ValueError(f"{key} is not supported with task: {config.task}; remove it")
    wanted = "preference" if config.task == "preference" else "feedback"
    if config.data.format not in ("auto", wanted):
        raise ValueError(f"data.format must be auto or {wanted} with task: {config.task}, got {config.data.format!r}")
    reference = (config.preference if config.task == "preference" else config.kto).reference
    if reference == "adapter_off" and (config.method != "lora" or config.model.init_from is not None):
        raise ValueError(f"{config.task}.reference adapter_off needs method: lora without model.init_from (switched "
                         "off, the adapter leaves the original base, not the start); use precomputed")
    if reference == "frozen_copy" and config.method != "full":
        raise ValueError(f"{config.task}.reference frozen_copy is for method: full; a LoRA run uses adapter_off")


CLASSIFY_BEST_METRICS = ("eval_loss", "accuracy", "macro_f1")
PRETRAIN_BEST_METRICS = ("eval_loss", "eval_perplexity")


class CheckpointConfig(Section):
    every_steps: int | None = Field(None, ge=1, description="also always at the end and on SIGINT/SIGTERM")
    keep_last: int = Field(2, ge=1)


class ParamRange(Section):
    """Where one searched key's values come from: exactly one of four kinds.

    `int` is a Python builtin, so the field is `integer` and `int` its YAML name (and its dump).
    """

    model_config = ConfigDict(serialize_by_alias=True)

    # A kind not given is left out of dumps (exclude_if), so a resolved config shows `lora.r: {choices: [8, 16]}`.
    log_uniform: tuple[float, float] | None = Field(
        None, exclude_if=lambda v: v is None, description="[low, high] on a log scale (learning rates)"
    )
    uniform: tuple[float, float] | None = Field(None, exclude_if=lambda v: v is None, description="[low, high]")
    integer: tuple[int, int] | None = Field(
        None, alias="int", exclude_if=lambda v: v is None, description="[low, high], both included"
    )
    choices: list[bool | int | float | str] | None = Field(
        None, min_length=1, exclude_if=lambda v: v is None, description="values to pick from"
    )

    @model_validator(mode="before")
    @classmethod
    def _a_mapping_of_known_kinds(cls, value: Any) -> Any:
        kinds = ["log_uniform", "uniform", "int", "choices"]
        if not isinstance(value, dict):
            raise ValueError("give a range: {log_uniform: [low, high]}, {uniform: [low, high]}, "
                             "{int: [low, high]} or {choices: [a, b, ...]}")
        for key in value:
            if key not in kinds:
                close = difflib.get_close_matches(str(key), kinds, n=1, cutoff=0.5)
                hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(kinds)}"
                raise ValueError(f"unknown key '{key}'; {hint}")
        return value

    @model_validator(mode="after")
    def _exactly_one_valid_range(self) -> ParamRange:
        given = {name: value for name, value in (("log_uniform", self.log_uniform), ("uniform", self.uniform),
                                                 ("int", self.integer), ("choices", self.choices)) if value is not None}
        if len(given) != 1:
            raise ValueError("give exactly one of log_uniform, uniform, int, choices")
        (kind, value), = given.items()
        if kind != "choices" and not value[0] < value[1]:
            raise ValueError(f"{kind}: low must be below high")
        if kind == "log_uniform" and value[0] <= 0:
            raise ValueError("log_uniform: low must be above 0 (a log scale)")
        return self


class TuneConfig(Section):
    """A hyperparameter search over this run file (`tuneforge tune`); `tuneforge train` ignores it."""

    trials: int = Field(10, ge=1, description="trials to finish (complete or pruned); --trials overrides")
    metric: Literal["eval_loss"] = Field("eval_loss", description="minimized: a trial's final validation loss")
    seed: int = Field(0, description="seed of the TPE sampler")
    space: dict[str, ParamRange] = Field(
        min_length=1, description="dotted config key (as for --set) -> its range, e.g. lora.r: {choices: [8, 16]}"
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        # RunConfig.tune is optional, which hides these keys from describe_errors' suggestions.
        keys = ["trials", "metric", "seed", "space"]
        for key in value if isinstance(value, dict) else ():
            if key not in keys:
                close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.5)
                raise ValueError(f"unknown key '{key}'; " + (f"did you mean '{close[0]}'?" if close
                                                             else f"valid keys here: {', '.join(keys)}"))
        return value

    @field_validator("space")
    @classmethod
    def _searchable_keys(cls, space: dict[str, ParamRange]) -> dict[str, ParamRange]:
        for key in space:
            if key == "output_dir" or key.split(".")[0] == "tune":
                raise ValueError(f"{key} cannot be searched (each trial gets its own output_dir; tune is the search)")
        return space


class RunConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    task: Literal["chat", "classify", "pretrain", "preference", "kto"] = Field(
        "chat", description="chat: train replies (causal LM); classify: a classification head on text + label records; "
        "pretrain: continued pretraining on plain text (every token trained, packed); preference: chosen vs rejected "
        "pairs (DPO, IPO, ORPO, SimPO); kto: replies labelled desirable or not"
    )
    method: Literal["lora", "full"] = "lora"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tune: TuneConfig | None = Field(None, description="a hyperparameter search over this run (tuneforge tune)")
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig, description="settings of task: classify")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig, description="settings of task: preference")
    kto: KTOConfig = Field(default_factory=KTOConfig, description="settings of task: kto")
    output_dir: Path = Path("runs/run")

    @model_validator(mode="after")
    def _absolute_output(self) -> RunConfig:
        if not self.output_dir.is_absolute():
            object.__setattr__(self, "output_dir", self.output_dir.resolve())
        return self

    @model_validator(mode="after")
    def _quantized_base_needs_adapter_and_cuda(self) -> RunConfig:
        if self.model.quantize is None:
            return self
        if self.method != "lora":
            raise ValueError("model.quantize trains an adapter on a frozen 4-bit base; set method: lora")
        from tuneforge.models.quantize import quantization_problem

        problem = quantization_problem()
        if problem:
            raise ValueError(f"model.quantize {problem}")
        return self

    @model_validator(mode="after")
    def _classify_settings_fit_the_task(self) -> RunConfig:
        if self.task != "classify":
            if self.classify != ClassifyConfig():
                raise ValueError("classify applies to task: classify (set task: classify, or remove the section)")
            return self
        unused = [("data.replay", self.data.replay is not None), ("data.packing", self.data.packing),
                  ("model.quantize", self.model.quantize is not None)]
        for key, given in unused:
            if given:
                raise ValueError(f"{key} is not supported with task: classify; remove it")
        if self.data.format not in ("auto", "classification"):
            raise ValueError(f"data.format must be auto or classification with task: classify, got {self.data.format!r}")
        if self.eval.best_metric.removeprefix("eval_") not in ("loss", "accuracy", "macro_f1"):
            raise ValueError(f"eval.best_metric must be one of {', '.join(CLASSIFY_BEST_METRICS)} with task: classify, "
                             f"got {self.eval.best_metric!r}")
        return self

    @model_validator(mode="after")
    def _pretrain_settings_fit_the_task(self) -> RunConfig:
        if self.task != "pretrain":
            if self.data.split_long_texts and self.data.format not in ("auto", "text"):
                raise ValueError("data.split_long_texts cuts text records; it does not apply to data.format "
                                 f"{self.data.format!r}")
            return self
        if self.data.format not in ("auto", "text"):
            raise ValueError(f"data.format must be auto or text with task: pretrain, got {self.data.format!r}")
        chat_only = [("data.replay", self.data.replay is not None), ("eval.prompts", self.eval.prompts is not None)]
        for key, given in chat_only:
            if given:
                raise ValueError(f"{key} is a chat setting (it generates replies); remove it with task: pretrain")
        if self.eval.best_metric not in PRETRAIN_BEST_METRICS:
            raise ValueError(f"eval.best_metric must be one of {', '.join(PRETRAIN_BEST_METRICS)} with task: "
                             f"pretrain, got {self.eval.best_metric!r}")
        if not self.data.validation and not self.data.val_split:
            raise ValueError("data.validation task: pretrain reports perplexity on held-out text: name held-out files "
                             "in data.validation or set data.val_split")
        for key in ("packing", "split_long_texts"):  # what pretraining wants, unless the run file says otherwise
            if key not in self.data.model_fields_set:
                object.__setattr__(self.data, key, True)
        return self

    @model_validator(mode="after")
    def _start_fits_the_run(self) -> RunConfig:
        """A run from another fine-tune's weights trains them further the way they were trained."""
        if self.model.init_from is None:
            return self
        from tuneforge.models.load import saved_fine_tune

        saved, info = saved_fine_tune(self.model.init_from)
        if self.task == "classify" or info.get("task") == "classify":
            raise ValueError("model.init_from is not supported with classifiers (task: classify, or a start that is one)")
        if info["method"] == "full" and self.method != "full":
            raise ValueError(f"model.init_from holds full weights ({saved}); set method: full to train them further")
        if info["method"] == "lora":
            if self.method != "lora":
                raise ValueError(f"model.init_from holds a LoRA adapter ({saved}); set method: lora to train it further")
            if not same_model(info["base_model"], self.model.name):
                raise ValueError(f"model.init_from's adapter was trained on {info['base_model']}, not on model.name "
                                 f"{self.model.name}; set model.name: {info['base_model']}")
        if self.train.kl_to_base > 0:
            raise ValueError("train.kl_to_base cannot be used with model.init_from (its reference would be the "
                             "original base model, not the weights the run starts from)")
        return self

    @model_validator(mode="after")
    def _preference_settings_fit_the_task(self) -> RunConfig:
        preference_settings_fit(self)
        return self

    @model_validator(mode="after")
    def _kl_needs_adapter_and_replay(self) -> RunConfig:
        if self.train.kl_to_base > 0 and (self.method != "lora" or self.data.replay is None):
            raise ValueError(
                "train.kl_to_base needs method: lora (the base model is the adapter switched off) "
                "and a data.replay section (the KL term covers replay tokens)"
            )
        return self


def same_model(a: str, b: str) -> bool:
    """Two model references name the same model: equal, or the same local directory."""
    return a == b or Path(a).expanduser().is_dir() and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def load_config(path: Path, overrides: list[str] = ()) -> RunConfig:
    """Read, override and validate a run file; every failure is a ConfigError naming the spot."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    overridden: set[tuple[str, ...]] = set()
    for item in overrides:
        keys = apply_override(raw, item)
        overridden.add(keys)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, path, text, overridden)) from None


def apply_override(raw: dict, item: str) -> tuple[str, ...]:
    """Apply one `a.b=value` (value parsed as YAML, so numbers and lists keep their type)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    keys = tuple(key.strip().split("."))
    node = raw
    for part in keys[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a section")
        node = child
    try:
        node[keys[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from None
    return keys


def describe_errors(exc: ValidationError, path: Path, text: str, overridden: set[tuple[str, ...]]) -> str:
    lines = [f"{path}: invalid config ({exc.error_count()} problem{'s' if exc.error_count() > 1 else ''})"]
    for error in exc.errors():
        cross_field = not error["loc"]  # a check across sections; its message starts with the key it is about
        if cross_field:
            key, _, rest = error["msg"].removeprefix("Value error, ").partition(" ")
            error = {**error, "loc": tuple(key.split(".")), "msg": rest}
        loc = tuple(str(part) for part in error["loc"])
        dotted = ".".join(loc) or "(top level)"
        if any(loc[: len(keys)] == keys for keys in overridden):
            where = "--set"
        else:
            line = yaml_line(text, error["loc"])
            where = f"{path}:{line}" if line else str(path)
        if error["type"] == "extra_forbidden":
            message = f"unknown key '{loc[-1]}'"
            valid = valid_keys(error["loc"][:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            message += f"; did you mean '{close[0]}'?" if close else f"; valid keys here: {', '.join(valid)}"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] not in ("missing",) and "input" in error and not cross_field:
                message += f" (got {error['input']!r})"
        lines.append(f"  {where}: {dotted}: {message}")
    return "\n".join(lines)


def valid_keys(loc: tuple) -> list[str]:
    """The field names of the section at `loc`, for 'did you mean' suggestions."""
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def yaml_line(text: str, loc: tuple) -> int | None:
    """1-based line of the deepest key of `loc` present in the YAML text."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML: every default filled in, every path absolute."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
