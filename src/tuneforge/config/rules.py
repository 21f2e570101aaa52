"""The rules across a run file's sections, each checked once, when the file is loaded.

RunConfig's validator (config/schema.py) calls `check_rules` after every section has checked its
own fields.  The rules of one task are one function, and TASK_RULES maps each `task` to it: the
only place the rules branch on the task (tests/test_config.py pins that every task has one).
Each rule raises a ValueError whose message starts with the dotted key it is about, which
config/load.py turns into `FILE:LINE: KEY: problem`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tuneforge.config.metric_names import reported_name
from tuneforge.paths import saved_fine_tune

if TYPE_CHECKING:  # schema.py imports this module to run the rules
    from tuneforge.config.schema import RunConfig

LOWER_IS_BETTER = ("eval_loss", "eval_perplexity")  # the values a best checkpoint may be chosen by, besides scores
CLASSIFY_BEST_METRICS = ("eval_loss", "accuracy", "macro_f1")
PRETRAIN_BEST_METRICS = ("eval_loss", "eval_perplexity")


def check_rules(config: RunConfig) -> None:
    """Every cross-section rule, in a fixed order; the first broken one is the error."""
    quantized_base_needs_adapter_and_cuda(config)
    TASK_RULES[config.task](config)
    start_fits_the_run(config)
    kl_needs_adapter_and_replay(config)
    grpo_settings_need_grpo(config)
    preference_sections_need_their_task(config)
    image_section_needs_its_task(config)


def metric_key(name: str) -> str:
    """The metrics.jsonl key of a metric: eval_loss, eval_token_f1, ... (train/selection.py has the same)."""
    return name if name.startswith("eval_") else f"eval_{name}"


# --- each task's rules --------------------------------------------------------------------------

def chat_rules(config: RunConfig) -> None:
    """task: chat: the best checkpoint is judged by something the run measures."""
    classify_section_unused(config)
    split_long_texts_needs_text(config)
    best = config.eval.best_metric
    if metric_key(best) in LOWER_IS_BETTER:
        return
    named = {reported_name(spec) for spec in config.eval.metrics}  # module:function is named by its function
    if metric_key(best).removeprefix("eval_") not in {*named, "accuracy", "macro_f1"}:
        raise ValueError(f"eval.best_metric {best} is not one of eval.metrics ({', '.join(config.eval.metrics)})")
    if config.eval.every_steps and config.eval.metrics and not config.data.validation:
        raise ValueError(f"eval.best_metric {best} is scored on the answers to validation examples; name them in "
                         "data.validation (val_split holds out tokenized data only), or use eval_loss")


def classify_rules(config: RunConfig) -> None:
    """task: classify: text + label records, none of the generation-only settings."""
    unused = [("data.replay", config.data.replay is not None), ("data.packing", config.data.packing),
              ("model.quantize", config.model.quantize is not None)]
    for key, given in unused:
        if given:
            raise ValueError(f"{key} is not supported with task: classify; remove it")
    if config.data.format not in ("auto", "classification"):
        raise ValueError(f"data.format must be auto or classification with task: classify, got {config.data.format!r}")
    best_metric_one_of(config, CLASSIFY_BEST_METRICS)
    split_long_texts_needs_text(config)


def image_classify_rules(config: RunConfig) -> None:
    """task: image_classify: labelled images (data/images.py), the classify section's labels and weights."""
    from tuneforge.config.schema import DEFAULT_IMAGE_MODEL

    if "name" not in config.model.model_fields_set:  # the text models' default cannot see
        object.__setattr__(config.model, "name", DEFAULT_IMAGE_MODEL)
    unused = [("data.replay", config.data.replay is not None), ("data.packing", config.data.packing),
              ("data.split_long_texts", config.data.split_long_texts),
              ("model.quantize", config.model.quantize is not None), ("model.init_from", config.model.init_from is not None)]
    for key, given in unused:
        if given:
            raise ValueError(f"{key} is not supported with task: image_classify; remove it")
    if config.data.format != "auto":
        raise ValueError(f"data.format must be auto with task: image_classify (image folders, or JSONL/CSV rows with "
                         f"an image path and a label), got {config.data.format!r}")
    if config.image.train_last is not None and config.method != "full":
        raise ValueError("image.train_last freezes part of a full fine-tune; set method: full (LoRA freezes the "
                         "whole backbone already)")
    best_metric_one_of(config, CLASSIFY_BEST_METRICS)


def image_section_needs_its_task(config: RunConfig) -> None:
    if config.task != "image_classify" and config.image != type(config.image)():
        raise ValueError("image applies to task: image_classify (set task: image_classify, or remove the section)")


def pretrain_rules(config: RunConfig) -> None:
    """task: pretrain: plain text, perplexity on held-out text; packs and splits long texts unless told not to."""
    classify_section_unused(config)
    if config.data.format not in ("auto", "text"):
        raise ValueError(f"data.format must be auto or text with task: pretrain, got {config.data.format!r}")
    chat_only = [("data.replay", config.data.replay is not None), ("eval.prompts", config.eval.prompts is not None)]
    for key, given in chat_only:
        if given:
            raise ValueError(f"{key} is a chat setting (it generates replies); remove it with task: pretrain")
    best_metric_one_of(config, PRETRAIN_BEST_METRICS)
    if not config.data.validation and not config.data.val_split:
        raise ValueError("data.validation task: pretrain reports perplexity on held-out text: name held-out files "
                         "in data.validation or set data.val_split")
    for key in ("packing", "split_long_texts"):  # what pretraining wants, unless the run file says otherwise
        if key not in config.data.model_fields_set:
            object.__setattr__(config.data, key, True)


GRPO_BEST_METRICS = ("reward", "pass_rate")


def grpo_rules(config: RunConfig) -> None:
    """task: grpo: prompt records scored by at least one reward; the best checkpoint by held-out reward."""
    classify_section_unused(config)
    if not config.rewards:
        raise ValueError("rewards task: grpo learns from rewards: list at least one (a function or a grader)")
    unused = [("data.replay", config.data.replay is not None), ("data.packing", config.data.packing),
              ("train.kl_to_base", config.train.kl_to_base > 0), ("data.split_long_texts", config.data.split_long_texts)]
    for key, given in unused:
        if given:
            raise ValueError(f"{key} is not supported with task: grpo (grpo.beta is its KL to the base); remove it")
    if config.data.format != "auto":
        raise ValueError(f"data.format must be auto with task: grpo (records with a prompt), got {config.data.format!r}")
    if config.grpo.beta > 0 and config.method != "lora":
        raise ValueError("grpo.beta needs method: lora (the reference is the adapter switched off, no second copy)")
    if "best_metric" not in config.eval.model_fields_set:
        object.__setattr__(config.eval, "best_metric", "reward")
    best_metric_one_of(config, GRPO_BEST_METRICS)


def preference_rules(config: RunConfig) -> None:
    """task: preference: chosen/rejected pairs (data/preference.py)."""
    pair_rules(config, config.preference.reference, "preference")


def kto_rules(config: RunConfig) -> None:
    """task: kto: replies labelled desirable or not."""
    pair_rules(config, config.kto.reference, "feedback")


def pair_rules(config: RunConfig, reference: str, data_format: str) -> None:
    """Preference tasks: replay, packing and kl_to_base belong to chat SFT; the reference must exist."""
    classify_section_unused(config)
    for key, given in (("data.replay", config.data.replay is not None), ("data.packing", config.data.packing),
                       ("train.kl_to_base", config.train.kl_to_base > 0),
                       ("model.quantize", config.model.quantize is not None)):
        if given:
            raise ValueError(f"{key} is not supported with task: {config.task}; remove it")
    if config.data.format not in ("auto", data_format):
        raise ValueError(f"data.format must be auto or {data_format} with task: {config.task}, got {config.data.format!r}")
    if reference == "adapter_off" and (config.method != "lora" or config.model.init_from is not None):
        raise ValueError(f"{config.task}.reference adapter_off needs method: lora without model.init_from (switched "
                         "off, the adapter leaves the original base, not the start); use precomputed")
    if reference == "frozen_copy" and config.method != "full":
        raise ValueError(f"{config.task}.reference frozen_copy is for method: full; a LoRA run uses adapter_off")


def preference_sections_need_their_task(config: RunConfig) -> None:
    if config.task != "preference" and config.preference != type(config.preference)():
        raise ValueError("preference applies to task: preference (set task: preference, or remove the section)")
    if config.task != "kto" and config.kto != type(config.kto)():
        raise ValueError("kto applies to task: kto (set task: kto, or remove the section)")


TASK_RULES: dict[str, Callable[[RunConfig], None]] = {
    "chat": chat_rules,
    "classify": classify_rules,
    "image_classify": image_classify_rules,
    "pretrain": pretrain_rules,
    "grpo": grpo_rules,
    "preference": preference_rules,
    "kto": kto_rules,
}


def best_metric_one_of(config: RunConfig, names: tuple[str, ...]) -> None:
    """eval.best_metric is one of the values the task measures, written as NAME or eval_NAME."""
    if metric_key(config.eval.best_metric) not in {metric_key(name) for name in names}:
        raise ValueError(f"eval.best_metric must be one of {', '.join(names)} with task: {config.task}, "
                         f"got {config.eval.best_metric!r}")


def classify_section_unused(config: RunConfig) -> None:
    if config.classify != type(config.classify)():
        raise ValueError("classify applies to task: classify (set task: classify, or remove the section)")


def split_long_texts_needs_text(config: RunConfig) -> None:
    if config.data.split_long_texts and config.data.format not in ("auto", "text"):
        raise ValueError(f"data.split_long_texts cuts text records; it does not apply to data.format {config.data.format!r}")


# --- rules of every task --------------------------------------------------------------------------

def quantization_problem() -> str | None:
    """Why a 4-bit base cannot load here, or None when it can."""
    import torch  # seconds to import: only a run file that asks for a 4-bit base pays for it

    if not torch.cuda.is_available():
        return ("needs an NVIDIA GPU with CUDA (bitsandbytes' 4-bit kernels), and this machine has none; "
                "drop model.quantize to train LoRA on the full-precision base, or use "
                "train.gradient_checkpointing and a smaller batch to save memory")
    if importlib.util.find_spec("bitsandbytes") is None:
        return "needs the bitsandbytes package: pip install 'tuneforge[qlora]'"
    return None


def quantized_base_needs_adapter_and_cuda(config: RunConfig) -> None:
    if config.model.quantize is None:
        return
    if config.method != "lora":
        raise ValueError("model.quantize trains an adapter on a frozen 4-bit base; set method: lora")
    problem = quantization_problem()
    if problem:
        raise ValueError(f"model.quantize {problem}")


def start_fits_the_run(config: RunConfig) -> None:
    """A run from another fine-tune's weights trains them further the way they were trained."""
    if config.model.init_from is None:
        return
    saved, info = saved_fine_tune(config.model.init_from)
    if config.task == "classify" or info.get("task") in ("classify", "image_classify"):
        raise ValueError("model.init_from is not supported with classifiers (task: classify, or a start that is one)")
    if info["method"] == "full" and config.method != "full":
        raise ValueError(f"model.init_from holds full weights ({saved}); set method: full to train them further")
    if info["method"] == "lora":
        if config.method != "lora":
            raise ValueError(f"model.init_from holds a LoRA adapter ({saved}); set method: lora to train it further")
        if not same_model(info["base_model"], config.model.name):
            raise ValueError(f"model.init_from's adapter was trained on {info['base_model']}, not on model.name "
                             f"{config.model.name}; set model.name: {info['base_model']}")
    if config.train.kl_to_base > 0:
        raise ValueError("train.kl_to_base cannot be used with model.init_from (its reference would be the "
                         "original base model, not the weights the run starts from)")


def grpo_settings_need_grpo(config: RunConfig) -> None:
    if config.task != "grpo" and (config.rewards or config.grpo != type(config.grpo)()):
        raise ValueError("rewards and grpo apply to task: grpo (set task: grpo, or remove them)")


def kl_needs_adapter_and_replay(config: RunConfig) -> None:
    if config.train.kl_to_base > 0 and (config.method != "lora" or config.data.replay is None):
        raise ValueError(
            "train.kl_to_base needs method: lora (the base model is the adapter switched off) "
            "and a data.replay section (the KL term covers replay tokens)"
        )


def same_model(a: str, b: str) -> bool:
    """Two model references name the same model: equal, or the same local directory."""
    return a == b or Path(a).expanduser().is_dir() and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
