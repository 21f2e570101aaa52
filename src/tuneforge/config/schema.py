"""The run file's schema: one small pydantic model per section, each checking its own fields.

Every section forbids unknown keys, so a misspelled key stops the run with the file, the line
and the closest valid key (config/load.py renders that) instead of being silently ignored (the
most expensive kind of typo: you find out after the run).  Rules that tie several sections
together, and each task's own, are in config/rules.py; RunConfig runs them once, as it validates.
"""

from __future__ import annotations

import difflib
import glob
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tuneforge.config.gates import parse_gate
from tuneforge.config.metric_names import check_metric
from tuneforge.config.rewards import GRPOConfig, RewardConfig
from tuneforge.config.rules import check_rules
from tuneforge.errors import ConfigError, ModelError
from tuneforge.paths import saved_fine_tune

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
DEFAULT_IMAGE_MODEL = "embedded:efficientnet-lite0"  # task: image_classify's default (models/image_backbone.py)


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
        return each_checked(check_metric, names)

    @field_validator("gates")
    @classmethod
    def _gates_parse(cls, gates: list[str]) -> list[str]:
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


class ImageConfig(Section):
    """Settings of `task: image_classify`: the backbone's input, which layers train, and the augmentations."""

    image_size: int | None = Field(
        None, ge=16, description="square input size for training and prediction; default: the model's own (timm's data "
        "config); smaller is faster on a CPU"
    )
    train_last: int | None = Field(
        None, ge=0, description="method full: train the new head and only the backbone's last N layer groups (timm's "
        "coarse groups: stem, stages), the rest frozen (batch norms included); 0: head only; unset: every layer"
    )
    augment: bool = Field(True, description="random resized crop, flip and colour jitter on training images")
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="probability of a horizontal flip")
    scale: tuple[float, float] = Field((0.5, 1.0), description="random resized crop: [min, max] share of the area kept")
    color_jitter: float = Field(0.2, ge=0.0, description="brightness, contrast and saturation jitter (0: none)")

    @field_validator("scale")
    @classmethod
    def _area_range(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must be [min, max] with 0 < min <= max <= 1, got {list(scale)}")
        return scale


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
    recompute_chosen: bool = Field(
        True, description="run the chosen and rejected rows apart and recompute the chosen ones in backward: about "
        "half the activation memory for one more forward of half the rows; false: autograd keeps both at once"
    )
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
    task: Literal["chat", "classify", "image_classify", "pretrain", "grpo", "preference", "kto"] = Field(
        "chat", description="chat: train replies (causal LM); classify: a classification head on text + label records; "
        "image_classify: an image backbone (timm) with a new head on labelled images (docs/images.md); "
        "pretrain: continued pretraining on plain text (every token trained, packed); grpo: reinforcement "
        "fine-tuning on prompts scored by rewards (docs/grpo.md); preference: chosen vs rejected pairs (DPO, IPO, "
        "ORPO, SimPO; docs/preference.md); kto: replies labelled desirable or not"
    )
    method: Literal["lora", "full"] = "lora"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tune: TuneConfig | None = Field(None, description="a hyperparameter search over this run (tuneforge tune)")
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig,
                                     description="settings of task: classify and task: image_classify")
    image: ImageConfig = Field(default_factory=ImageConfig, description="settings of task: image_classify")
    grpo: GRPOConfig = Field(default_factory=GRPOConfig, description="settings of task: grpo")
    rewards: list[RewardConfig] = Field(default_factory=list, description="task: grpo: the weighted rewards")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig, description="settings of task: preference")
    kto: KTOConfig = Field(default_factory=KTOConfig, description="settings of task: kto")
    output_dir: Path = Path("runs/run")

    @model_validator(mode="after")
    def _absolute_output(self) -> RunConfig:
        if not self.output_dir.is_absolute():
            object.__setattr__(self, "output_dir", self.output_dir.resolve())
        return self

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RunConfig:
        check_rules(self)  # config/rules.py: every rule across sections, and each task's own
        return self
